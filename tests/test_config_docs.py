"""The config tree documents itself: docs/config.md is generated and must not go stale; every
field has a description; `study init` writes a starter that validates; `--version`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from midtrain import __version__, configdoc
from midtrain.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_committed_config_reference_is_current():
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == configdoc.render(), "docs/config.md is stale: run `midtrain config docs`"


def test_every_config_field_has_a_description_and_units_are_shown():
    assert configdoc.undocumented() == []
    text = configdoc.render()
    assert "| `tokens` | int | required | tokens |" in text
    assert "| `max_repetition` | float | `1.0` | epochs |" in text


def test_config_docs_check_flags_a_stale_page(tmp_path):
    page = tmp_path / "config.md"
    runner = CliRunner()
    assert runner.invoke(app, ["config", "docs", "--out", str(page)]).exit_code == 0
    assert runner.invoke(app, ["config", "docs", "--out", str(page), "--check"]).exit_code == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert runner.invoke(app, ["config", "docs", "--out", str(page), "--check"]).exit_code == 1


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"midtrain {__version__}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from _data_fixtures import make_docs, train_tiny_tokenizer

    from midtrain.data.prepare import prepare_source
    from midtrain.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("init")
    tok = load_tokenizer(train_tiny_tokenizer(root / "tok"))
    for i, name in enumerate(("web", "math")):
        src = root / f"{name}.txt"
        src.write_text("\n".join(make_docs(40, seed=i)))
        prepare_source(name, [src], root / "data" / name, tok, heldout_fraction=0.0)
    return root, tok


def test_study_init_writes_a_commented_study_that_validates(stores, tmp_path):
    from midtrain.study.config import load_study

    root, tok = stores
    ckpt = _tiny_checkpoint(tmp_path, tok)
    out = tmp_path / "s" / "study.toml"
    out.parent.mkdir()
    res = CliRunner().invoke(app, [
        "study", "init", str(ckpt), "--store", f"web={root / 'data/web'}",
        "--store", f"math={root / 'data/math'}", "--out", str(out), "--tasks", "hellaswag",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "# Anneal tokens per run. [tokens]" in text and "REQUIRED" in text
    data = tomllib.loads(text)
    assert data["base"] == {"web": 1.0} and data["candidates"] == [
        {"name": "math", "mix": {"math": 1.0}}
    ]
    cfg = load_study(out)
    assert cfg.stores["math"] == str(root / "data" / "math") and cfg.eval.tasks == ["hellaswag"]
    again = CliRunner().invoke(app, ["study", "init", str(ckpt), "--store", "web=x",
                                     "--store", "m=y", "--out", str(out)])  # fmt: skip
    assert again.exit_code != 0


def _tiny_checkpoint(tmp_path: Path, tok) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32)  # fmt: skip
    path = tmp_path / "ckpt"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
