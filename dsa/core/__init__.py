"""The lowest floor: what every other package may import and that imports none of them.

errors (the one user-facing exception), paths (checked before any work), storage (atomic
files and self-checking caches), numerics (streaming sums and Hill alpha, shared by the
search ops and the baselines), constants (the published methods' hyper-parameters) and guards
(the search ops' numerical fallbacks as one value, passed down to them).
"""
