//! The native module `vgen._vgen`. The public API is `vgen/__init__.py`, a thin Python layer over this.
//!
//! Requests, events and metadata cross as JSON strings, converted by the Python layer; waits and file writes
//! release the GIL; callbacks are called on the engine's dispatcher thread, holding the GIL only for the call.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgen_core::{ErrorCode, JobId};

pyo3::create_exception!(
    vgen,
    VgenError,
    PyException,
    "A vgen error: `.code` names it, `.retryable` says whether retrying may help."
);

/// Raises the core error as `vgen.VgenError` with `.code` (e.g. "invalid_argument") and `.retryable`; the Python
/// layer maps the code to its subclass.
fn to_py(e: vgen_core::Error) -> PyErr {
    Python::attach(|py| {
        let err = VgenError::new_err(e.message().to_string());
        let value = err.value(py);
        let _ = value.setattr("code", e.code().name());
        let _ = value.setattr("retryable", e.retryable());
        let _ = value.setattr("retry_after_ms", e.retry_after_ms());
        err
    })
}

#[pyclass(name = "Engine", module = "vgen._vgen", frozen)]
struct PyEngine {
    engine: vgen_core::Engine,
}

#[pymethods]
impl PyEngine {
    /// Starts an engine from a JSON configuration (the Rust `EngineConfig` fields; unknown fields are errors).
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Self> {
        let config = vgen_core::EngineConfig::from_json(config_json).map_err(to_py)?;
        py.detach(|| {
            let (models, _) = engine_models()?;
            vgen_core::Engine::with_models(config, models).map(|engine| Self { engine })
        })
        .map_err(to_py)
    }

    /// Validates and queues a JSON request; `callback(event_json)` gets every event on the dispatcher thread.
    #[pyo3(signature = (request_json, callback=None))]
    fn submit(&self, request_json: &str, callback: Option<Py<PyAny>>) -> PyResult<u64> {
        let request = vgen_core::Request::from_json(request_json).map_err(to_py)?;
        let cb = callback.map(|f| {
            Arc::new(move |ev: &vgen_core::engine::Event| {
                let json = serde_json::to_string(ev).unwrap_or_default();
                Python::attach(|py| {
                    // The Python layer turns a host callback's exception into a warning; anything that still
                    // escapes goes to `sys.unraisablehook`, as Python does for errors nobody can catch.
                    if let Err(e) = f.call1(py, (json,)) {
                        e.write_unraisable(py, Some(f.bind(py)));
                    }
                });
            }) as vgen_core::engine::Callback
        });
        self.engine.submit_with(request, cb).map(|id| id.0).map_err(to_py)
    }

    /// The job's status as a dict, at once.
    fn poll<'py>(&self, py: Python<'py>, job: u64) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine.poll(JobId(job)).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("id", job)?;
        d.set_item("state", s.state.name())?;
        d.set_item("stage", s.stage.name())?;
        d.set_item("progress", s.progress)?;
        d.set_item("step", s.step)?;
        d.set_item("steps", s.steps)?;
        d.set_item("queue_position", s.queue_position)?;
        d.set_item("attempts", s.attempt)?;
        d.set_item("eta_seconds", s.eta_ms.map(|ms| ms as f64 / 1e3))?;
        d.set_item("cache_hit", s.cache_hit)?;
        d.set_item("frames_ready", s.frames_ready)?;
        d.set_item("preview_seq", s.preview_seq)?;
        let error = s.error.map(|e| (e.code.name(), e.message, e.retryable));
        d.set_item("error", error)?;
        Ok(d)
    }

    /// Events after `since`, as a JSON array.
    fn events(&self, job: u64, since: u64) -> PyResult<String> {
        let events = self.engine.events(JobId(job), since).map_err(to_py)?;
        Ok(serde_json::to_string(&events).unwrap_or_default())
    }

    /// Blocks without the GIL until the job ends or `timeout` seconds pass (then raises `timeout`).
    ///
    /// The wait is cut into slices so that, between two of them, Python's signal handlers run: Ctrl-C raises
    /// `KeyboardInterrupt` here within a slice instead of after the job.
    #[pyo3(signature = (job, timeout=None))]
    fn wait(&self, py: Python<'_>, job: u64, timeout: Option<f64>) -> PyResult<()> {
        const SLICE: Duration = Duration::from_millis(50);
        let deadline = timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        loop {
            let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE));
            match py.detach(|| self.engine.wait(JobId(job), Some(slice))) {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == ErrorCode::Timeout && deadline.is_none_or(|d| Instant::now() < d) => {
                    py.check_signals()?;
                }
                Err(e) => return Err(to_py(e)),
            }
        }
    }

    fn cancel(&self, job: u64) -> PyResult<bool> {
        self.engine.cancel(JobId(job)).map_err(to_py)
    }

    fn result(&self, job: u64) -> PyResult<PyVideo> {
        self.engine.result(JobId(job)).map(|video| PyVideo { video }).map_err(to_py)
    }

    /// The frames decoded so far, as (index of the first, video), or None before the first chunk.
    fn frames(&self, job: u64) -> PyResult<Option<(usize, PyVideo)>> {
        let so_far = self.engine.frames(JobId(job)).map_err(to_py)?;
        Ok(so_far.map(|f| {
            let video = Arc::new(vgen_core::Video { frames: f.frames, fps: 0.0, metadata: Default::default() });
            (f.first, PyVideo { video })
        }))
    }

    fn metrics(&self) -> String {
        serde_json::to_string(&self.engine.metrics()).unwrap_or_default()
    }

    fn metrics_prometheus(&self) -> String {
        self.engine.metrics().to_prometheus()
    }

    /// Drains for up to `timeout` seconds, then cancels what is left; every engine thread is joined.
    #[pyo3(signature = (timeout=10.0))]
    fn close(&self, py: Python<'_>, timeout: f64) {
        py.detach(|| self.engine.shutdown(Duration::from_secs_f64(timeout.max(0.0))));
    }
}

impl Drop for PyEngine {
    /// Shuts the engine down with the GIL released. Python drops an engine holding the GIL (`del`, garbage
    /// collection, a notebook cell run again), and the shutdown joins the dispatcher thread, which needs the GIL
    /// to deliver the events the shutdown queues to Python callbacks: holding it here would wait forever.
    /// During interpreter finalization no thread can take the GIL again; `vgen/__init__.py` closes every live
    /// engine at exit, before that, so the engine's own drop finds nothing left to deliver.
    fn drop(&mut self) {
        let timeout = Duration::from_millis(self.engine.config().shutdown_timeout_ms);
        Python::attach(|py| {
            let finalizing = py
                .import("sys")
                .and_then(|sys| sys.call_method0("is_finalizing"))
                .and_then(|f| f.extract::<bool>())
                .unwrap_or(true);
            if !finalizing {
                py.detach(|| self.engine.shutdown(timeout));
            }
        });
    }
}

/// A finished video, owned by Rust and shared without copies.
#[pyclass(name = "NativeVideo", module = "vgen._vgen", frozen)]
struct PyVideo {
    video: Arc<vgen_core::Video>,
}

#[pymethods]
impl PyVideo {
    #[getter]
    fn fps(&self) -> f64 {
        self.video.fps
    }

    #[getter]
    fn metadata_json(&self) -> String {
        serde_json::to_string(&self.video.metadata).unwrap_or_default()
    }

    /// numpy's array interface over the frames, `(T, H, W, 3)` uint8, read-only: `numpy.asarray(video)` views
    /// the engine's buffer without a copy and keeps this object alive as its base.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let f = &self.video.frames;
        let d = PyDict::new(py);
        d.set_item("shape", (f.num_frames, f.height, f.width, 3usize))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (f.data().as_ptr() as usize, true))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    /// Writes the video by extension (.mp4, .gif, .png, or a folder ending in /), without the GIL.
    fn save(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        py.detach(|| vgen_core::encode::write(std::path::Path::new(path), &self.video)).map_err(to_py)
    }
}

/// The devices libtorch sees here, the CPU first, as dicts: `name` (`"cpu"`, `"cuda:0"`, ...), `type`, `index`,
/// `auto` (whether an engine with no `devices` runs on it) and, with `probe`, the measured `matmul_gflops` and
/// `attention_max_error` of the same check `vgen devices` runs. Probing runs without the GIL.
#[pyfunction]
#[pyo3(signature = (probe=true))]
fn devices<'py>(py: Python<'py>, probe: bool) -> PyResult<Vec<Bound<'py, PyDict>>> {
    use vgen_core::Device;
    let (all, auto) = py.detach(|| (Device::all(), Device::auto()));
    let probes = if probe {
        let probes = py.detach(|| all.iter().map(|d| d.probe()).collect::<vgen_core::Result<Vec<_>>>());
        Some(probes.map_err(to_py)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(all.len());
    for (i, device) in all.iter().enumerate() {
        let d = PyDict::new(py);
        d.set_item("name", device.to_string())?;
        let (kind, index) = match device {
            Device::Cpu => ("cpu", None),
            Device::Cuda(n) => ("cuda", Some(*n)),
        };
        d.set_item("type", kind)?;
        d.set_item("index", index)?;
        d.set_item("auto", auto.contains(device))?;
        if let Some(p) = probes.as_ref().map(|p| &p[i]) {
            d.set_item("matmul_gflops", p.matmul_gflops)?;
            d.set_item("attention_max_error", p.attention_max_error)?;
        }
        out.push(d);
    }
    Ok(out)
}

/// Why CUDA is on or off, in one line (the `CUDA:` line of `vgen devices`).
#[pyfunction]
fn cuda_status(py: Python<'_>) -> String {
    py.detach(|| vgen_core::runtime::init().describe())
}

/// The models of every engine made here, as the C API's `vgen_engine_new` has them: the built-in ones, every Wan
/// folder on the search path (`$VGEN_MODELS`, the user's data folder, this package's `models/`, the install
/// prefix, the source tree; see `vgen_core::models::SearchPath`), and `faulty`, the test card failing on command (`!fail=CODE*N`,
/// `!panic`, `!oom`, `!slow=MS` in the prompt) so that a host can test how it handles failure. The second value
/// lists the model folders that failed to open and were skipped.
fn engine_models() -> vgen_core::Result<(vgen_core::models::Models, Vec<vgen_core::Error>)> {
    Ok(vgen_core::models::Models::discover())
}

/// The models an engine made here has (see `engine_models`). Returns `(models, problems)`: a dict per model, and
/// one message per model folder that failed to open and was skipped.
#[pyfunction]
fn models<'py>(py: Python<'py>) -> PyResult<(Vec<Bound<'py, PyDict>>, Vec<String>)> {
    let (models, problems) = py.detach(engine_models).map_err(to_py)?;
    let mut out = Vec::new();
    for m in models.summaries() {
        let d = PyDict::new(py);
        d.set_item("name", &m.name)?;
        d.set_item("default", m.default)?;
        d.set_item("width", m.defaults.width)?;
        d.set_item("height", m.defaults.height)?;
        d.set_item("num_frames", m.defaults.num_frames)?;
        d.set_item("fps", m.defaults.fps)?;
        d.set_item("steps", m.defaults.steps)?;
        d.set_item("guidance_scale", m.defaults.guidance_scale)?;
        d.set_item("size_multiple", m.size_multiple)?;
        d.set_item("dtype", &m.dtype)?;
        d.set_item("weights_bytes", m.weights_bytes)?;
        d.set_item("folder", &m.folder)?;
        d.set_item("test_model", m.test_model)?;
        out.push(d);
    }
    Ok((out, problems.iter().map(|e| e.message().to_string()).collect()))
}

/// Every error code name, in numeric order (for the Python exception classes).
#[pyfunction]
fn error_codes() -> Vec<(&'static str, u32, bool)> {
    ErrorCode::ALL.iter().map(|c| (c.name(), *c as u32, c.retryable())).collect()
}

#[pymodule]
fn _vgen(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", vgen_core::runtime::VERSION)?;
    m.add("libtorch_version", vgen_core::runtime::LIBTORCH_VERSION)?;
    m.add("VgenError", m.py().get_type::<VgenError>())?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyVideo>()?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_status, m)?)?;
    m.add_function(wrap_pyfunction!(models, m)?)?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    Ok(())
}
