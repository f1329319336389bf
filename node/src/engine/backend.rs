//! The llama.cpp backend: initialised once per process, and a report of what the linked
//! llama.cpp build can use (CPU instruction sets, GPU offload).
//!
//! `llama_backend_init` must run exactly once; `llama-cpp-2` enforces that with an error on
//! the second call, so the backend lives in a process-wide `OnceLock` and every model load
//! borrows it from there.

use std::ffi::CStr;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

use super::EngineError;

/// The error is kept as text because `LlamaCppError` is not `Clone` and every later caller
/// needs to see why the first initialisation failed.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend, initialised on first use.
///
/// The first call also routes llama.cpp's own log lines into `tracing` (target
/// `llama-cpp-2`), so they obey the same filter and format as ours, and logs the build's
/// system info.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            let backend = LlamaBackend::init().map_err(|err| err.to_string())?;
            tracing::info!(
                system_info = %system_info(),
                gpu_offload = backend.supports_gpu_offload(),
                "llama.cpp backend initialised"
            );
            Ok(backend)
        })
        .as_ref()
        .map_err(|err| EngineError::Backend(err.clone()))
}

/// llama.cpp's system info line: the instruction sets its CPU backend was compiled with
/// (`AVX2 = 1`, `AVX512 = 1`, …) and the other backends linked in. This is the check that
/// the GGML_NATIVE build picked up this machine's CPU features.
pub fn system_info() -> String {
    // SAFETY: llama_print_system_info takes no arguments and returns a pointer to a
    // NUL-terminated static buffer inside llama.cpp that stays valid until the next call;
    // it is copied out immediately.
    let raw = unsafe { llama_cpp_sys_2::llama_print_system_info() };
    if raw.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, see above.
    unsafe { CStr::from_ptr(raw) }
        .to_string_lossy()
        .trim()
        .to_string()
}
