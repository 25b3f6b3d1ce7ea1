//! The native module `vgen._vgen`. The public API is re-exported by `vgen/__init__.py`.

use pyo3::prelude::*;

/// The devices libtorch sees here, as strings (`"cpu"`, `"cuda:0"`, ...). The CPU is always listed.
#[pyfunction]
fn devices() -> Vec<String> {
    vgen_core::Device::all().iter().map(ToString::to_string).collect()
}

#[pymodule]
fn _vgen(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", vgen_core::runtime::VERSION)?;
    m.add("libtorch_version", vgen_core::runtime::LIBTORCH_VERSION)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    Ok(())
}
