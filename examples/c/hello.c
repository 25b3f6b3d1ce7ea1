/* Prints the versions and the devices vgen sees, as hello.rs, hello.cc and hello.py do. */
#include <stdio.h>

#include "vgen.h"

int main(void) {
    size_t gpus = vgen_cuda_device_count();
    printf("vgen %s on libtorch %s\n", vgen_version(), vgen_libtorch_version());
    printf("devices: cpu");
    for (size_t i = 0; i < gpus; i++) printf(" cuda:%zu", i);
    printf("\n");
    return 0;
}
