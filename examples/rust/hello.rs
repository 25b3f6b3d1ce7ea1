//! Prints the versions and the devices vgen sees, as `hello.c`, `hello.cc` and `hello.py` do.
fn main() {
    println!("vgen {} on libtorch {}", vgen_core::runtime::VERSION, vgen_core::runtime::LIBTORCH_VERSION);
    let devices: Vec<String> = vgen_core::Device::all().iter().map(ToString::to_string).collect();
    println!("devices: {}", devices.join(" "));
}
