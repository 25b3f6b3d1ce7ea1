"""Prints the versions and the devices vgen sees, as hello.rs, hello.c and hello.cc do."""
import vgen

print(f"vgen {vgen.__version__} on libtorch {vgen.libtorch_version}")
print("devices: " + " ".join(d["name"] for d in vgen.devices(probe=False)))
