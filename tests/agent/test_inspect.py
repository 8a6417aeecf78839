"""`symwatch inspect`: every weight-based indicator of a saved model, offline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from symwatch.cli.main import main
from symwatch_agent.entry import inspect as inspector
from symwatch_agent.measure.heads import PER_HEAD
from test_boundaries import _run


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:2] = 0  # two dead units
        model[0].bias[:2] = 0
        model[2].weight[:, :2] = 0
    return model


def _inspect(path, *flags) -> dict:
    out = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect", str(path), "--json",
                          *flags], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {row["name"]: row["values"] for row in json.loads(out.stdout)["layers"]}


def test_a_state_dict_gets_the_weight_indicators(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    got = _inspect(tmp_path / "sd.pt")
    assert got["0"]["dead_fraction"] == pytest.approx(2 / 16)  # paired by width with "2"
    assert got["0"]["numerical_rank"] == int(torch.linalg.matrix_rank(
        model[0].weight.detach(), rtol=max(model[0].weight.shape) *
        torch.finfo(torch.float32).eps))
    assert "modes" in got["0"]
    assert "softmax_translation" in got["2"] and "balance" not in got["0"]


def test_a_trusted_module_is_paired_like_the_live_agent_pairs_it(tmp_path):
    torch.save(_model(), tmp_path / "m.pt")
    got = _inspect(tmp_path / "m.pt", "--trust")
    assert "balance" in got["0"] and got["0"]["dead_fraction"] == pytest.approx(2 / 16)
    refused = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect",
                              str(tmp_path / "m.pt")], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--trust" in refused.stderr


def test_a_file_that_is_no_model_says_so_without_advising_trust(tmp_path):
    """A text file is not a pickle someone must trust: it gets its own message, with the
    prefix every other subcommand's errors have (a new user's report: it read "not a plain
    state_dict (IndexError); … pass --trust")."""
    (tmp_path / "text.csv").write_text("a,b\n1,2\n")
    out = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect",
                          str(tmp_path / "text.csv")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.startswith("symwatch inspect: ") and "not a file torch.save wrote" in out.stderr
    assert "--trust" not in out.stderr and "Traceback" not in out.stderr
    missing = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect",
                              str(tmp_path / "none.pt")], capture_output=True, text=True, timeout=120)
    assert missing.stderr.startswith("symwatch inspect: ") and "no such file" in missing.stderr


def _refused(path) -> str:
    out = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"symwatch inspect: {path}: "), out.stderr
    return out.stderr


def test_what_is_not_a_model_file_is_named_and_a_checkpoints_weights_are_found(tmp_path):
    """A new user's pass: a recording (SQLite) was told to pass --trust; a truncated or
    foreign .safetensors, or a directory, printed a traceback; a checkpoint that keeps its
    weights under "model" read as "no measurable layers found", exit 0."""
    from symwatch.core.recording import Recorder

    with Recorder(tmp_path / "run.db"):
        pass
    assert "an SQLite database, not a model file" in _refused(tmp_path / "run.db")
    (tmp_path / "d.safetensors").mkdir()
    assert "is a directory" in _refused(tmp_path / "d.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 300)
    reading = ("not a readable .safetensors file" if importlib.util.find_spec("safetensors")
               else "needs the safetensors package")
    assert reading in _refused(tmp_path / "bad.safetensors")
    torch.save({"epoch": 3, "note": "x"}, tmp_path / "empty.pt")
    assert "no tensors in it or one level down (keys: 'epoch', 'note')" in _refused(
        tmp_path / "empty.pt")
    for key, extra in (("model", {"epoch": 3}),
                       ("state_dict", {"rng_state": torch.get_rng_state()})):  # a tensor beside
        torch.save({key: _model().state_dict(), **extra}, tmp_path / "ckpt.pt")
        out = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect",
                              str(tmp_path / "ckpt.pt"), "--json"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and f"reading the state_dict under {key!r}" in out.stderr
        got = {row["name"]: row["values"] for row in json.loads(out.stdout)["layers"]}
        assert got["0"]["dead_fraction"] == pytest.approx(2 / 16)


def test_safetensors_files_are_read_when_the_package_is_there(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(_model().state_dict(), str(tmp_path / "m.safetensors"))
    assert _inspect(tmp_path / "m.safetensors")["0"]["dead_fraction"] == pytest.approx(2 / 16)


def test_the_observer_cli_runs_it_and_prints_a_table(tmp_path, capfd):
    torch.save(_model().state_dict(), tmp_path / "sd.pt")
    assert main(["inspect", str(tmp_path / "sd.pt")]) == 0
    out = capfd.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["layer", "type", "shape", "weight_norm"]
    assert main(["inspect", str(tmp_path / "missing.pt")]) != 0


@pytest.mark.parametrize("json_flag", [["--json"], []])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, json_flag):
    """`symwatch inspect PATH --json | head`: a real pipe whose reading end is closed before the
    inspector writes (it still loads torch and the model then)."""
    torch.save(_model().state_dict(), tmp_path / "sd.pt")
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "inspect", str(tmp_path / "sd.pt"),
                             *json_flag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything was written
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 1


def test_the_table_says_na_and_dash_not_zero():
    text = inspector.render({"layers": [{"name": "a", "type": "Linear", "shape": [2, 2],
                                         "values": {"weight_norm": None, "stable_rank": 1.5}},
                                        {"name": "b", "type": "Linear", "shape": [2, 2],
                                         "values": {"weight_norm": 2.0}}],
                             "skipped": [], "nonfinite": ["a"]})
    assert "N/A" in text and "-" in text.splitlines()[3]


def test_inspect_help_needs_no_torch():
    result = _run({"torch", "symwatch_agent"}, """
        from symwatch.cli.main import main
        try:
            main(['inspect', '--help'])
        except SystemExit as exc:
            assert exc.code in (0, None)
    """)
    assert result.returncode == 0, result.stderr
    assert "symwatch inspect" in result.stdout


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=16,
                                     vocab_size=40)
    return transformers.GPT2Model(config), config


def test_attention_heads_of_a_saved_gpt2_module_and_state_dict_agree(tmp_path):
    model, config = _gpt2()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    result = inspector.inspect(model)  # a module says it has 4 heads (in process: the
    trusted = {row["name"]: row["values"] for row in result["layers"]}  # pickled path is above)
    heads = {k: v for k, v in trusted["h.0.attn"].items() if ".h" in k}
    assert len(heads) == 4 * len(PER_HEAD) and "dead_heads" in trusted["h.0.attn"]
    table = inspector.render(result)
    assert "h.0.attn per head:" in table and "qk_rank" in table
    # a state_dict does not say: --heads, else a config.json next to it
    plain = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect",
                            str(tmp_path / "sd.pt")], capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0 and "--heads N" in plain.stdout  # skipped, with what to pass
    given = _inspect(tmp_path / "sd.pt", "--heads", "4")
    config.save_pretrained(tmp_path)  # writes config.json (n_head 4)
    from_config = _inspect(tmp_path / "sd.pt")
    for got in (given, from_config):
        assert {k: v for k, v in got["h.0.attn"].items() if ".h" in k} == heads
        # c_attn is read as the (out, in) Linear it is: its 96 outputs are the units
        assert got["h.0.attn.c_attn"]["dead_fraction"] == trusted["h.0.attn.c_attn"][
            "dead_fraction"]
        assert got["h.0.attn.c_attn"]["numerical_rank"] == \
            trusted["h.0.attn.c_attn"]["numerical_rank"]
    bad = subprocess.run([sys.executable, "-m", "symwatch_agent.entry.inspect", str(tmp_path / "sd.pt"),
                          "--heads", "four"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--heads 12" in bad.stderr
