//! rbd's rustc wrapper and linker shim: one small binary with two roles.
//!
//! rbd compiles this file once (see rbd.daemon.build.shim) because it runs once per
//! rustc and once per link: a Python process would cost ~0.1 s each time.
//!
//! As `rbd-rustc-wrapper` (cargo's RUSTC_WRAPPER), for a rustc invocation that
//! links (bin, test, proc-macro, dylib, cdylib, build script), it points rustc
//! at a linker shim and then runs the user's own wrapper (RBD_CHAIN_WRAPPER,
//! e.g. sccache) or rustc. Invocations that do not link run unchanged.
//! - An explicit `-C linker=X` (cargo config, RUSTFLAGS) becomes
//!   `-C linker=$RBD_SHIM_DIR/linkers/<name of X>`. rustc infers the linker
//!   flavor from that file name, so the shim keeps it. `-C linker` is not part
//!   of rustc's incremental hash and cargo never sees the change: nothing is
//!   fingerprinted differently.
//! - Otherwise rustc runs its default linker (`cc`) from PATH, so
//!   `$RBD_SHIM_DIR/default` (holding a `cc` shim) goes first on rustc's PATH.
//! - A linker that cannot be found (not on PATH, no such file) is left as it
//!   is: rustc then says "linker `X` not found", as it would without rbd, where
//!   a shim in its place would have it say that the shim failed.
//!
//! As a linker (any other name), it runs the real linker, then appends one
//! line to `$RBD_TIMING_DIR/link-<pid>.tsv`:
//! `package \t version \t crate \t kind \t start_ns \t end_ns \t exit \t linker`.
//! It exits as the real linker did.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{exit, Command};
use std::time::{SystemTime, UNIX_EPOCH};

const WRAPPER_NAME: &str = "rbd-rustc-wrapper";
const DEFAULT_LINKER: &str = "cc";

fn main() {
    let mut args = env::args_os();
    let argv0 = PathBuf::from(args.next().unwrap_or_default());
    let rest: Vec<OsString> = args.collect();
    if argv0.file_name() == Some(OsStr::new(WRAPPER_NAME)) {
        wrap(rest)
    } else {
        link(&argv0, rest)
    }
}

fn fail(message: String) -> ! {
    eprintln!("rbd shim: {message}");
    exit(127)
}

fn value_after<'a>(args: &'a [OsString], flag: &str) -> Option<&'a OsStr> {
    let prefix = format!("{flag}=");
    for (i, arg) in args.iter().enumerate() {
        let bytes = arg.as_bytes();
        if bytes == flag.as_bytes() {
            return args.get(i + 1).map(|v| v.as_os_str());
        }
        if let Some(value) = bytes.strip_prefix(prefix.as_bytes()) {
            return Some(OsStr::from_bytes(value));
        }
    }
    None
}

/// What the rustc invocation builds that calls a linker ("" when nothing does).
fn linking_kind(args: &[OsString]) -> &'static str {
    if args.iter().any(|a| a == "--test") {
        return "test";
    }
    let mut kinds = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let bytes = args[i].as_bytes();
        if bytes == b"--crate-type" {
            if let Some(v) = args.get(i + 1) {
                kinds.push(v.as_bytes().to_vec());
            }
            i += 1;
        } else if let Some(v) = bytes.strip_prefix(b"--crate-type=") {
            kinds.push(v.to_vec());
        }
        i += 1;
    }
    for kind in kinds.iter().flat_map(|k| k.split(|b| *b == b',')) {
        match kind {
            b"bin" => return "bin",
            b"proc-macro" => return "proc-macro",
            b"dylib" => return "dylib",
            b"cdylib" => return "cdylib",
            _ => {}
        }
    }
    ""
}

/// Where `-C linker=X` sits in args: (index, the text before X in that arg, X).
fn linker_arg(args: &[OsString]) -> Option<(usize, Vec<u8>, OsString)> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let bytes = args[i].as_bytes();
        if (bytes == b"-C" || bytes == b"--codegen") && i + 1 < args.len() {
            if let Some(v) = args[i + 1].as_bytes().strip_prefix(b"linker=") {
                found = Some((i + 1, b"linker=".to_vec(), OsString::from_vec(v.to_vec())));
            }
            i += 1;
        } else {
            for prefix in [&b"-Clinker="[..], b"--codegen=linker="] {
                if let Some(v) = bytes.strip_prefix(prefix) {
                    found = Some((i, prefix.to_vec(), OsString::from_vec(v.to_vec())));
                }
            }
        }
        i += 1;
    }
    // rustc takes the last one given, as do we.
    found
}

fn ensure_link(path: &Path) {
    if path.symlink_metadata().is_ok() {
        return;
    }
    let exe = env::current_exe().unwrap_or_else(|e| fail(format!("cannot find itself: {e}")));
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    // Another wrapper may win the race: then the link exists, which is all we need.
    if let Err(e) = std::os::unix::fs::symlink(exe, path) {
        if path.symlink_metadata().is_err() {
            fail(format!("cannot create {}: {e}", path.display()));
        }
    }
}

/// Whether a program rustc would run as its linker exists: a path as it is, a bare
/// name on this process's PATH (the one rustc is given).
fn findable(program: &OsStr) -> bool {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return path.is_file();
    }
    env::var_os("PATH")
        .map(|dirs| env::split_paths(&dirs).any(|dir| dir.join(path).is_file()))
        .unwrap_or(false)
}

fn wrap(mut args: Vec<OsString>) -> ! {
    if args.is_empty() {
        fail("no compiler to run".into());
    }
    let mut command;
    match env::var_os("RBD_CHAIN_WRAPPER").filter(|w| !w.is_empty()) {
        Some(wrapper) => command = Command::new(wrapper),
        None => command = Command::new(args.remove(0)),
    }
    let kind = linking_kind(&args);
    if let (false, Some(shim_dir)) = (kind.is_empty(), env::var_os("RBD_SHIM_DIR")) {
        let shim_dir = PathBuf::from(shim_dir);
        match linker_arg(&args) {
            Some((_, _, linker)) if !findable(&linker) => {}
            None if !findable(OsStr::new(DEFAULT_LINKER)) => {}
            Some((index, prefix, linker)) => {
                let name = Path::new(&linker).file_name().unwrap_or(OsStr::new(DEFAULT_LINKER));
                let shim = shim_dir.join("linkers").join(name);
                ensure_link(&shim);
                let mut arg = prefix;
                arg.extend_from_slice(shim.as_os_str().as_bytes());
                args[index] = OsString::from_vec(arg);
                command.env("RBD_REAL_LINKER", linker);
            }
            None => {
                let mut path = shim_dir.join("default").into_os_string();
                if let Some(old) = env::var_os("PATH") {
                    path.push(":");
                    path.push(old);
                }
                command.env("PATH", path);
            }
        }
        let crate_name = value_after(&args, "--crate-name").unwrap_or(OsStr::new(""));
        let mut unit = OsString::new();
        for part in [
            env::var_os("CARGO_PKG_NAME").unwrap_or_default().as_os_str(),
            env::var_os("CARGO_PKG_VERSION").unwrap_or_default().as_os_str(),
            crate_name,
            OsStr::new(kind),
        ] {
            if !unit.is_empty() {
                unit.push("\t");
            }
            unit.push(part);
        }
        command.env("RBD_LINK_UNIT", unit);
    }
    let err = command.args(&args).exec();
    fail(format!("cannot run the compiler: {err}"))
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn link(argv0: &Path, args: Vec<OsString>) -> ! {
    let name = argv0.file_name().unwrap_or(OsStr::new(DEFAULT_LINKER)).to_os_string();
    let real = env::var_os("RBD_REAL_LINKER").unwrap_or(name);
    let mut command = Command::new(&real);
    command.args(&args).env_remove("RBD_REAL_LINKER").env_remove("RBD_LINK_UNIT");
    // The real linker and whatever it runs see the PATH rustc was given.
    if let (Some(shim_dir), Some(path)) = (env::var_os("RBD_SHIM_DIR"), env::var_os("PATH")) {
        let ours = PathBuf::from(shim_dir).join("default");
        let kept: Vec<PathBuf> = env::split_paths(&path).filter(|p| *p != ours).collect();
        if let Ok(joined) = env::join_paths(kept) {
            command.env("PATH", joined);
        }
    }
    let (Some(dir), Some(unit)) = (env::var_os("RBD_TIMING_DIR"), env::var_os("RBD_LINK_UNIT"))
    else {
        let err = command.exec();
        fail(format!("cannot run linker {}: {err}", real.to_string_lossy()))
    };
    let start = now_ns();
    let status = command
        .status()
        .unwrap_or_else(|e| fail(format!("cannot run linker {}: {e}", real.to_string_lossy())));
    let end = now_ns();
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let mut line = unit.into_vec();
    line.extend_from_slice(format!("\t{start}\t{end}\t{code}\t").as_bytes());
    line.extend_from_slice(real.as_bytes());
    line.push(b'\n');
    let file = PathBuf::from(dir).join(format!("link-{}.tsv", std::process::id()));
    // A record that cannot be written leaves this link unmeasured, never the build broken.
    if let Ok(mut out) = OpenOptions::new().create(true).append(true).open(file) {
        let _ = out.write_all(&line);
    }
    exit(code)
}
