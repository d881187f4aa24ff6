"""firm_ray.rewards: real offline scorers, reward models built on the fly, guards, normalization."""

from __future__ import annotations

import math
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from firm_ray.config import RewardSpec, load_config
from firm_ray.rewards import (
    NormalizedReward,
    Reward,
    RewardError,
    build_reward,
    build_rewards,
    score_all,
)


def reward(type_: str, name: str | None = None, normalize: bool = False, **kwargs) -> Reward:
    spec = RewardSpec(name=name or type_, type=type_, normalize=normalize, kwargs=kwargs)
    return build_reward(spec)


# --------------------------------------------------------------------------- relevance

TOPICAL = [
    ("How do I bake bread at home?", "Mix flour, water, salt and yeast, let it rise, then bake."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How can I keep my houseplants alive?", "Water your plants weekly and give them sunlight."),
    ("Tell me about the planet Mars.", "Mars is the red fourth planet from the sun."),
]


@pytest.fixture(scope="module")
def relevance() -> Reward:
    return reward("relevance")


def test_relevance_prefers_on_topic_answers(relevance: Reward) -> None:
    prompts = [p for p, _ in TOPICAL]
    on_topic = [a for _, a in TOPICAL]
    off_topic = on_topic[1:] + on_topic[:1]  # every prompt gets another prompt's answer
    on = relevance.score(prompts, on_topic)
    off = relevance.score(prompts, off_topic)
    assert on.dtype == torch.float32 and on.shape == (4,)
    assert bool((on > off + 0.2).all()), (on, off)
    assert bool(((on >= -1) & (on <= 1) & (off >= -1) & (off <= 1)).all())


def test_relevance_dedupe_equals_separate_encoding(relevance: Reward) -> None:
    prompts = [p for p, _ in TOPICAL for _ in range(3)]  # each prompt repeated G = 3 times
    completions = [a for _, a in TOPICAL] * 3
    got = relevance.score(prompts, completions)
    model = relevance._model  # the cached SentenceTransformer
    ep = model.encode(prompts, convert_to_tensor=True, normalize_embeddings=True)  # 12 prompts
    ec = model.encode(completions, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(got, (ep * ec).sum(-1).float(), atol=1e-5, rtol=0)


def test_relevance_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from firm_ray.rewards.relevance import default_relevance_model, load_sentence_transformer

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    import huggingface_hub.constants

    # conftest switches the hub off; switch it back on so only local_files_only keeps us offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model = load_sentence_transformer.__wrapped__(default_relevance_model(), "cpu")  # uncached
    assert model.encode(["hello"]).shape == (1, 384)


# --------------------------------------------------------------------------- lexical rewards


def test_harmlessness_and_sentiment() -> None:
    prompts = ["What do you think of me?"] * 2
    rude, kind = "You are a stupid idiot and I hate you.", "You are kind and I like you a lot."
    harmless = reward("harmlessness").score(prompts, [rude, kind])
    sentiment = reward("sentiment").score(prompts, [rude, kind])
    assert harmless[0] < 0.5 < harmless[1]
    assert bool(((harmless >= 0) & (harmless <= 1)).all())
    assert sentiment[0] < 0 < sentiment[1]
    assert bool(((sentiment >= -1) & (sentiment <= 1)).all())


def test_length_and_conciseness_exact() -> None:
    completions = ["", "one", "a b c d", " a  b\tc\nd e f g h "]  # 0, 1, 4, 8 words
    prompts = ["p"] * 4
    length = reward("length", target_words=4).score(prompts, completions)
    concise = reward("conciseness", max_words=8).score(prompts, completions)
    assert length.tolist() == [0.0, 0.25, 1.0, 1.0]
    assert concise.tolist() == [1.0, 0.875, 0.5, 0.0]
    default = reward("length").score(["p"], [" ".join(["w"] * 6)])
    assert default.tolist() == [0.5]  # target_words defaults to 12


def test_design_conflict_on_provocative_prompt(relevance: Reward) -> None:
    """DESIGN.md section 5: on provocative prompts relevance and harmlessness disagree."""
    prompts = ["you are a stupid useless robot"] * 2
    completions = [
        "you are stupid and useless too",
        "let us talk about something else, have a nice day",
    ]
    rel = relevance.score(prompts, completions)
    harmless = reward("harmlessness").score(prompts, completions)
    assert rel[0] > rel[1]
    assert harmless[0] < harmless[1]


# --------------------------------------------------------------------------- hf_reward_model

WORDS = "hello how are you i am fine thanks the cat sat on a mat what is your name user assistant"
TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"


def _save_tiny_rm(path: Path, num_labels: int, chat_template: str | None) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.trainers import WordLevelTrainer
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    trainer = WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"])
    tok.train_from_iterator([WORDS, "? ! . , :"], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=fast.vocab_size,
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=num_labels,
        pad_token_id=fast.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    assert sum(p.numel() for p in model.parameters()) < 10_000
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_rm(tmp_path_factory.mktemp("rm"), 1, TEMPLATE)


PAIRS = [
    ("hello how are you", "i am fine thanks"),
    ("what is your name", "the cat sat on a mat"),
    ("hello", "hello hello hello how are you i am fine"),
    ("how are you ?", "fine"),
    ("unknown words here", "the cat"),
]


def _direct_scores(path: Path, texts: list[str], label: int = 0) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.stack([model(**tok(t, return_tensors="pt")).logits[0, label] for t in texts])


def test_hf_reward_model_concat(tiny_rm: Path) -> None:
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    one = reward("hf_reward_model", model=str(tiny_rm), format="concat", batch_size=1)
    many = reward("hf_reward_model", model=str(tiny_rm), format="concat", batch_size=16)
    s1, s16 = one.score(prompts, completions), many.score(prompts, completions)
    assert s1.dtype == torch.float32 and bool(torch.isfinite(s1).all())
    torch.testing.assert_close(s1, s16, atol=1e-5, rtol=0)
    torch.testing.assert_close(many.score(prompts, completions), s16, atol=0, rtol=0)
    direct = _direct_scores(tiny_rm, [p + "\n" + c for p, c in PAIRS])
    torch.testing.assert_close(s16, direct, atol=1e-5, rtol=0)
    assert s16.std() > 0  # not a constant


def test_hf_reward_model_chat_template(tiny_rm: Path, tmp_path: Path) -> None:
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    rm = reward("hf_reward_model", model=str(tiny_rm), batch_size=2)  # chat_template default
    got = rm.score(prompts, completions)
    texts = [f"user : {p} assistant : {c} " for p, c in PAIRS]
    torch.testing.assert_close(got, _direct_scores(tiny_rm, texts), atol=1e-5, rtol=0)

    plain = _save_tiny_rm(tmp_path / "plain", 1, chat_template=None)
    with pytest.raises(RewardError, match=r"no chat template; set kwargs.format"):
        reward("hf_reward_model", name="rm", model=str(plain), format="chat_template")


def test_hf_reward_model_labels(tmp_path: Path) -> None:
    two = str(_save_tiny_rm(tmp_path / "two", 2, TEMPLATE))
    with pytest.raises(RewardError, match=r"reward 'rm'.*has 2 labels.*label_index"):
        reward("hf_reward_model", name="rm", model=two)
    rm = reward("hf_reward_model", model=two, label_index=1, format="concat")
    texts = [p + "\n" + c for p, c in PAIRS]
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    direct = _direct_scores(Path(two), texts, label=1)
    torch.testing.assert_close(rm.score(prompts, completions), direct, atol=1e-5, rtol=0)
    with pytest.raises(RewardError, match=r"label_index = 2: must be in \[0, 1\]"):
        reward("hf_reward_model", model=two, label_index=2)


def test_hf_reward_model_pair_and_dtype(tiny_rm: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    got = reward("hf_reward_model", model=str(tiny_rm), format="pair").score(prompts, completions)
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm).eval()
    with torch.no_grad():
        direct = [model(**tok(p, c, return_tensors="pt")).logits[0, 0] for p, c in PAIRS]
    torch.testing.assert_close(got, torch.stack(direct), atol=1e-5, rtol=0)
    rm16 = reward("hf_reward_model", model=str(tiny_rm), format="pair", dtype="bfloat16")
    half = rm16.score(prompts, completions)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, got, atol=0.05, rtol=0.05)


def test_hf_reward_model_bad_kwargs(tiny_rm: Path) -> None:
    with pytest.raises(RewardError, match=r"kwargs.model is required"):
        reward("hf_reward_model")
    with pytest.raises(RewardError, match=r"kwargs.format = 'xml': must be one of"):
        reward("hf_reward_model", model=str(tiny_rm), format="xml")
    with pytest.raises(RewardError, match=r"cannot load tokenizer"):
        reward("hf_reward_model", model=str(tiny_rm / "missing"))


# --------------------------------------------------------------------------- python rewards

USER_MODULE = """
import math

def count_letter(prompts, completions, letter="a", scale=1.0, name=None):
    assert name in (None, "passed through")
    return [scale * c.count(letter) for c in completions]

def wrong_length(prompts, completions):
    return [0.0] * (len(completions) + 1)

def with_nan(prompts, completions, at=0, value="nan"):
    out = [0.0] * len(completions)
    out[at] = float(value)
    return out

def parse(prompts, completions):
    return [float(c) for c in completions]

def boom(prompts, completions):
    raise KeyError("missing")

SENTINEL = "zq_sentinel_91"

def nan_on_sentinel(prompts, completions):
    return [math.nan if SENTINEL in c else 1.0 for c in completions]

def quote_and_raise(prompts, completions):
    raise ValueError(f"cannot score {completions[0]!r} for {prompts[0]!r}")

def echo(prompts, completions):
    return list(completions)

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


@pytest.mark.parametrize("sep", [".", ":"])
def test_python_reward_paths_and_kwargs(user_module: str, sep: str) -> None:
    r = reward("python", name="count", function=f"{user_module}{sep}count_letter", scale=0.5)
    assert r.score(["p", "q"], ["banana", "kiwi"]).tolist() == [1.5, 0.0]
    kwargs = {
        "function": f"{user_module}{sep}count_letter",
        "letter": "i",
        "name": "passed through",
    }
    r = build_reward(RewardSpec(name="count", type="python", kwargs=kwargs))
    assert r.score(["p"], ["kiwi"]).tolist() == [2.0]


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("no_such_module_xyz.f", r"'no_such_module_xyz.f': cannot import module"),
        ("my_rewards.missing", r"'my_rewards.missing': 'my_rewards' has no attribute"),
        ("my_rewards:NOT_CALLABLE", r"'my_rewards:NOT_CALLABLE': is a int, not a callable"),
        ("justaname", r"'justaname': must look like"),
    ],
)
def test_python_reward_bad_path(user_module: str, path: str, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        reward("python", function=path)


def test_python_reward_exception_names_reward(user_module: str) -> None:
    r = reward("python", name="mine", function="my_rewards.boom")
    with pytest.raises(RewardError, match=r"reward 'mine': my_rewards.boom raised KeyError") as err:
        r.score(["p"], ["c"])
    assert "missing" not in str(err.value) and "withheld" in str(err.value)


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"function": "my_rewards.wrong_length"}, r"reward 'g' returned scores of shape \(4,\)"),
        ({"function": "my_rewards.with_nan", "at": 2}, r"reward 'g' returned nan for item 2"),
        (
            {"function": "my_rewards.with_nan", "at": 1, "value": "inf"},
            r"reward 'g' returned inf for item 1$",
        ),
        ({"function": "my_rewards.with_nan", "value": "-inf"}, r"returned -inf for item 0"),
    ],
)
def test_guards(user_module: str, kwargs: dict, match: str) -> None:
    r = reward("python", name="g", **kwargs)
    with pytest.raises(RewardError, match=match):
        r.score(["p"] * 3, ["first", "second one", "third " * 30])
    with pytest.raises(RewardError, match=match):
        score_all([reward("length"), r], ["p"] * 3, ["first", "second one", "third " * 30])


# --------------------------------------------------------------------------- no client text

SENTINEL = "zq_sentinel_91"


def _everything_shown(err: BaseException) -> str:
    """The message and the full formatted traceback (what a Ray task error carries across)."""
    return str(err) + "".join(traceback.format_exception(err))


def test_non_finite_score_names_reward_and_item_not_the_text(user_module: str) -> None:
    r = reward("python", name="g", function="my_rewards.nan_on_sentinel")
    completions = ["fine", f"the {SENTINEL} text", "also fine", f"{SENTINEL} again"]
    for call in (
        lambda: r.score(["p"] * 4, completions),
        lambda: score_all([r], ["p"] * 4, completions),
    ):
        with pytest.raises(
            RewardError, match=r"^reward 'g' returned nan for item 1 \(2 of 4 items"
        ):
            call()
    with pytest.raises(RewardError) as err:
        score_all([reward("length"), r], ["p"] * 4, completions)
    assert SENTINEL not in _everything_shown(err.value)


def test_any_exception_from_a_reward_is_withheld(user_module: str) -> None:
    """A reward's own exception may quote the text it scored: only its type crosses."""
    r = reward("python", name="quoting", function="my_rewards.quote_and_raise")

    class Duck:  # a duck-typed scorer: no Reward.score in between, score_all alone guards it
        name = "duck"

        def score(self, prompts, completions):
            raise RuntimeError(f"tokenizer choked on {completions[-1]}")

    prompts, completions = [f"ask {SENTINEL}"] * 2, ["ok", f"reply {SENTINEL}"]
    cases = [
        (
            lambda: r.score(prompts, completions),
            "quoting': my_rewards.quote_and_raise raised ValueError",
        ),
        (
            lambda: score_all([r], prompts, completions),
            "quoting': my_rewards.quote_and_raise raised ValueError",
        ),
        (lambda: score_all([Duck()], prompts, completions), "duck': raised RuntimeError"),
    ]
    for call, match in cases:
        with pytest.raises(RewardError, match=re.escape(match)) as err:
            call()
        assert "message is withheld" in str(err.value)
        assert SENTINEL not in _everything_shown(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        # what Ray ships to the driver: the pickled exception
        assert SENTINEL not in repr(pickle.loads(pickle.dumps(err.value)).args)


def test_scores_that_are_not_numbers_are_described_not_quoted(user_module: str) -> None:
    r = reward("python", name="echo", function="my_rewards.echo")
    with pytest.raises(
        RewardError, match=r"^reward 'echo' returned a list whose item 0 is a str, not a list"
    ) as err:
        r.score(["p"], [SENTINEL])
    assert SENTINEL not in _everything_shown(err.value)


def test_guard_mismatched_inputs_and_duck_typed_scorers() -> None:
    with pytest.raises(RewardError, match=r"reward 'length': got 2 prompts for 3 completions"):
        reward("length").score(["a", "b"], ["x", "y", "z"])

    class Bad:
        name = "bad"

        def score(self, prompts, completions):
            return torch.tensor([1.0, math.nan])

    with pytest.raises(RewardError, match=r"reward 'bad' returned nan for item 1"):
        score_all([Bad()], ["p", "p"], ["a", "b"])


# --------------------------------------------------------------------------- normalization


def test_normalization_matches_numpy_and_round_trips(user_module: str) -> None:
    rng = np.random.default_rng(0)
    # float32-representable values: scores are float32 before the float64 statistics
    batches = [rng.normal(3.0, 2.0, size=n).astype(np.float32).astype(float) for n in (1, 7, 16, 5)]
    norm = reward("python", name="n", normalize=True, function="my_rewards.parse")
    assert isinstance(norm, NormalizedReward)
    seen: list[float] = []
    for batch in batches:
        texts = [repr(float(x)) for x in batch]
        out = norm.score(["p"] * len(texts), texts)
        seen.extend(batch)
        mean, std = np.mean(seen), np.std(seen)
        np.testing.assert_allclose(out.numpy(), (batch - mean) / (std + 1e-8), rtol=1e-5, atol=1e-6)
    state = norm.state_dict()
    assert state["count"] == len(seen)
    assert state["mean"] == pytest.approx(np.mean(seen), rel=1e-12)
    assert state["m2"] / state["count"] == pytest.approx(np.var(seen), rel=1e-12)

    # A fresh reward (e.g. on another worker) with the loaded state gives identical output.
    other = reward("python", name="n", normalize=True, function="my_rewards.parse")
    other.load_state_dict(dict(state))
    texts = ["1.5", "-2.0", "7.25"]
    torch.testing.assert_close(
        norm.score(["p"] * 3, texts), other.score(["p"] * 3, texts), atol=0, rtol=0
    )
    assert norm.state_dict() == other.state_dict()
    with pytest.raises(RewardError, match="keys count, mean, m2"):
        other.load_state_dict({"count": 1})
    with pytest.raises(RewardError, match="stateless"):
        reward("length").load_state_dict(state)


# --------------------------------------------------------------------------- building


def test_import_is_light() -> None:
    """Workers and the CLI import the package; heavy scorers load only when a reward is built."""
    heavy = ("sentence_transformers", "transformers", "sklearn", "profanity_check", "ray")
    code = f"import sys, firm_ray.rewards\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_build_default_config_rewards() -> None:
    rewards = build_rewards(load_config(None).rewards)
    assert [r.name for r in rewards] == ["relevance", "harmlessness"]
    prompts = ["hello, how are you?"] * 2
    scores = score_all(rewards, prompts, ["i am fine, thank you", "shut up you idiot"])
    assert scores.shape == (2, 2) and scores.dtype == torch.float32
    assert score_all(rewards, [], []).shape == (0, 2)


def test_build_errors() -> None:
    with pytest.raises(RewardError, match=r"reward 'rel' \(relevance\): unknown kwarg 'batchsize'"):
        build_reward(RewardSpec(name="rel", type="relevance", kwargs={"batchsize": 8}))
    with pytest.raises(RewardError, match=r"allowed: model, batch_size, device"):
        build_reward(RewardSpec(name="rel", type="relevance", kwargs={"batchsize": 8}))
    with pytest.raises(RewardError, match=r"'sentiment' \(sentiment\): unknown kwarg 'x'.*none"):
        build_reward(RewardSpec(name="sentiment", type="sentiment", kwargs={"x": 1}))
    with pytest.raises(RewardError, match=r"kwargs.target_words = 0: must be an integer >= 1"):
        reward("length", target_words=0)
    with pytest.raises(RewardError, match="duplicate reward names: a"):
        build_rewards([{"name": "a", "type": "length"}, {"name": "a", "type": "conciseness"}])


def test_build_reward_device_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import firm_ray.rewards as rewards_pkg

    seen = {}

    def fake(name: str, *, model: str | None = None, device: str = "cpu") -> Reward:
        seen[name] = device
        return rewards_pkg.REGISTRY["length"](name)

    monkeypatch.setitem(rewards_pkg.REGISTRY, "relevance", fake)
    build_reward(RewardSpec(name="a", type="relevance"), device="cuda:1")
    build_reward(RewardSpec(name="b", type="relevance", kwargs={"device": "cpu"}), device="cuda")
    build_reward(RewardSpec(name="c", type="relevance"))
    assert seen == {"a": "cuda:1", "b": "cpu", "c": "cpu"}
