import torch

import vgen


def test_uses_the_torch_wheels_libtorch():
    # vgen is built against the same libtorch release as the installed wheel, and shares it.
    assert vgen.libtorch_version.split("+")[0] == torch.__version__.split("+")[0]


def test_lists_devices_like_torch():
    devices = vgen.devices()
    assert devices[0] == "cpu"
    assert len(devices) == 1 + torch.cuda.device_count()


def test_version_is_semver():
    assert len(vgen.__version__.split(".")) == 3
