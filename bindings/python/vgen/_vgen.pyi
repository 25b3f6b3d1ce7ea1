__version__: str
libtorch_version: str

def devices() -> list[str]:
    """The devices libtorch sees here (``"cpu"``, ``"cuda:0"``, ...). The CPU is always listed."""
