// Prints the versions and the devices vgen sees, as hello.rs, hello.c and hello.py do.
#include <cstdio>
#include <string>

#include "vgen.h"

int main() {
    const std::string version = vgen_version();
    std::printf("vgen %s on libtorch %s\n", version.c_str(), vgen_libtorch_version());
    std::string devices = "cpu";
    for (size_t i = 0; i < vgen_cuda_device_count(); i++) devices += " cuda:" + std::to_string(i);
    std::printf("devices: %s\n", devices.c_str());
    return 0;
}
