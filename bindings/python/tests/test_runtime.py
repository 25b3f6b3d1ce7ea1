"""What vgen runs on: the torch wheel's libtorch, the devices it sees (probed), the models an engine has."""
import json
import os
import subprocess

import pytest
import torch

import vgen


def test_uses_the_torch_wheels_libtorch():
    # vgen is built against the same libtorch release as the installed wheel, and shares it.
    assert vgen.libtorch_version.split("+")[0] == torch.__version__.split("+")[0]


def test_version_is_semver_and_matches_the_cli(cli):
    assert len(vgen.__version__.split(".")) == 3 and all(p.isdigit() for p in vgen.__version__.split("."))
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert vgen.__version__ in out


def test_lists_devices_like_torch_and_probes_them():
    devices = vgen.devices()
    assert [d["name"] for d in devices] == ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    cpu = devices[0]
    assert (cpu["type"], cpu["index"]) == ("cpu", None)
    assert cpu["auto"] is (torch.cuda.device_count() == 0), "auto means every GPU, else the CPU"
    for d in devices:
        assert d["matmul_gflops"] > 0 and 0 <= d["attention_max_error"] < 1e-3, d
    for d in devices[1:]:
        assert (d["type"], d["auto"]) == ("cuda", True)
    unprobed = vgen.devices(probe=False)
    assert [d["name"] for d in unprobed] == [d["name"] for d in devices]
    assert "matmul_gflops" not in unprobed[0]


def test_cuda_status_says_why(cli):
    status = vgen.cuda_status()
    out = subprocess.run([str(cli), "devices"], capture_output=True, text=True, timeout=60).stdout
    assert f"CUDA: {status}" in out


def test_models_lists_what_an_engine_can_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory plays no part in finding models
    monkeypatch.delenv("VGEN_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-user-models"))
    models = {m["name"]: m for m in vgen.models()}
    assert {"testcard", "noop", "faulty", "shapes-tiny"} <= models.keys()
    assert [n for n, m in models.items() if m["default"]] == ["shapes-tiny"], "the real model, from any folder"
    assert all(models[n]["test_model"] and models[n]["folder"] is None for n in ("testcard", "noop", "faulty"))
    assert os.path.isfile(os.path.join(models["shapes-tiny"]["folder"], "model_index.json"))
    card = models["testcard"]
    assert (card["width"], card["height"], card["num_frames"], card["steps"], card["size_multiple"]) == (64, 64, 17, 8, 16)
    cli_models = json.loads(subprocess.run([str(cli), "models", "--json"], capture_output=True, text=True,
                                           timeout=60, cwd=tmp_path).stdout)
    assert {m["name"] for m in cli_models} == models.keys()
    for m in cli_models:
        ours = models[m["name"]]
        assert (ours["default"], ours["weights_bytes"], ours["steps"], ours["dtype"]) == (
            m["default"], m["weights_bytes"], m["steps"], m["dtype"]), m["name"]
    with vgen.Engine(devices=["cpu"]) as e:
        for name in models:
            assert e.submit(name, model=name, steps=1).wait(timeout=60)


def test_a_model_folder_that_fails_to_open_is_a_warning(tmp_path, monkeypatch):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    monkeypatch.setenv("VGEN_MODELS", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="skipped a model folder"):
        names = [m["name"] for m in vgen.models()]
    assert "testcard" in names and "broken-model" not in names
