"""What every experiment script shares: `run(main)` instead of `absl.app.run(main)`, and config checks.

`run(main, config=CONFIG_FLAG)`:
  * quiets library logging (Orbax's INFO lines, JAX's backend probing) unless --verbose or absl's
    -v/--verbosity is given; progress bars, tables and the script's own prints are unaffected;
  * validates the config against the ranges its config file declares (`RANGES`, below) before main
    runs, so a bad value stops the run at start with a message naming the field and its allowed range;
  * turns the errors a user can cause (`USER_ERRORS`: checkpoint, data, config, results-file and
    lock errors) into one line on stderr, `error: <message>`, and exit status 1, with nothing after
    it; the traceback, and whatever the shutdown reports, are printed too with --verbose;
  * lists the flags defined in this folder's shared modules (e.g. task_experiment's --tasks, --limit)
    in the script's own --help, not only under --helpfull.

A config file declares `RANGES = {field: rule}` next to its `get_config`, where `field` is a dotted
path into the config (`*` matches every key of a dict, e.g. "task_options.*.limit") and `rule` is
  (lo, hi)                 a number with lo <= value <= hi (None: unbounded; ints must be ints)
  (lo, hi, (a, b, ...))    as above, or exactly one of the listed special values (e.g. -1 = all)
  {"x", "y"}               one of these values
A list/tuple field is checked element by element.
Fields absent from a config (another variant) are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import app, flags
from absl import logging as absl_logging

from qjax.checkpoints.errors import CheckpointError
from qjax.data.paths import DataError
from qjax.eval.results import ResultsError
from qjax.quant.storage import StoredParamsError

_VERBOSE = flags.DEFINE_bool("verbose", False, "print tracebacks of errors and the libraries' INFO logs")


class ConfigError(ValueError):
    """A config value is outside the range its config file declares; the message names the field."""


class LockHeld(RuntimeError):
    """Another live process holds the lock of a work directory; the message says who."""


USER_ERRORS = (CheckpointError, StoredParamsError, DataError, ConfigError, ResultsError, LockHeld)


# --- config ranges ----------------------------------------------------------------------------------

def _describe(rule) -> str:
    if isinstance(rule, (set, frozenset)):
        return f"one of {sorted(rule, key=str)}"
    lo, hi, *special = rule
    if lo is not None and hi is not None:
        text = f"in [{lo}, {hi}]"
    elif lo is not None:
        text = f">= {lo}"
    else:
        text = f"<= {hi}"
    if special and special[0]:
        text += " or " + " or ".join(repr(v) for v in special[0])
    return text


def _ok(value, rule) -> bool:
    if isinstance(value, (list, tuple)) and not isinstance(rule, (set, frozenset)):
        return all(_ok(item, rule) for item in value)
    if isinstance(rule, (set, frozenset)):
        items = value if isinstance(value, (list, tuple)) else (value,)
        return all(item in rule for item in items)
    lo, hi, *special = rule
    if special and value in special[0] and not isinstance(value, bool):
        return True
    integral = all(isinstance(b, int) for b in (lo, hi) if b is not None)
    kinds = (int,) if integral else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def field_values(cfg: Any, parts: list[str], prefix: str):
    """(dotted name, value) of every field the path `parts` reaches in cfg ('*': every key)."""
    if not parts:
        yield prefix, cfg
        return
    head, rest = parts[0], parts[1:]
    keys = list(cfg.keys()) if head == "*" and hasattr(cfg, "keys") else [head]
    for key in keys:
        try:
            value = cfg[key]
        except (KeyError, AttributeError, TypeError):
            continue
        yield from field_values(value, rest, f"{prefix}.{key}")


def check_config(cfg: Any, ranges: Mapping[str, Any], name: str = "config") -> None:
    """ConfigError naming the first field of `cfg` outside its declared range (module docstring)."""
    for field, rule in ranges.items():
        for dotted, value in field_values(cfg, field.split("."), name):
            if value is None and not isinstance(rule, (set, frozenset)):
                continue  # None: the field's default ("not set"), e.g. a task option
            if not _ok(value, rule):
                raise ConfigError(f"--{dotted}={value!r} is out of range: allowed {_describe(rule)}")


def declared_ranges(config_flag) -> dict:
    """The RANGES dict of the config file given to a `config_flags.DEFINE_config_file` flag ({} if
    the file declares none)."""
    from ml_collections import config_flags

    name = config_flags.get_config_filename(flags.FLAGS[config_flag.name])
    path = Path(name)
    if not path.is_file() and ":" in name:  # "configs/x.py:variant"
        path = Path(name.rsplit(":", 1)[0])
    spec = importlib.util.spec_from_file_location(f"_ranges_of_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(getattr(module, "RANGES", {}))


# --- work-directory lock -----------------------------------------------------------------------------

@contextlib.contextmanager
def work_dir_lock(folder: Path) -> Iterator[None]:
    """Holds an exclusive lock on `folder` (its file `lock`) for the block; LockHeld naming the holder
    (pid, host, start time) if another process has it. The lock is an `fcntl.flock`, so the kernel
    releases it when its process dies, even by `kill -9`; the holder text is only informative."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockHeld(f"{folder} is in use by {holder} (lock file {path}); wait for it to finish, or "
                           f"give this run another work directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- logging, help, errors --------------------------------------------------------------------------

def verbose() -> bool:
    """--verbose, or absl -v / --verbosity >= 1 given on the command line."""
    return bool(_VERBOSE.value) or (flags.FLAGS["verbosity"].present and absl_logging.get_verbosity() >= 1)


def quiet_library_logging() -> None:
    """Library INFO logs off (absl threshold WARNING) unless --verbose or -v was given."""
    if verbose() or flags.FLAGS["verbosity"].present:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def _adopt_shared_flags() -> None:
    """Makes the flags defined in this folder's modules key flags of the main script (its --help)."""
    folder = Path(__file__).resolve().parent
    main = sys.argv[0]
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        path = getattr(sys.modules.get(module), "__file__", None) or module
        if module != main and Path(path).resolve().parent == folder:
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(main, flag)


def report_error(error: BaseException, show_traceback: Optional[bool] = None) -> None:
    """The one-line report of a user error (traceback first with --verbose; `show_traceback` decides
    instead in scripts whose flags absl does not parse)."""
    if verbose() if show_traceback is None else show_traceback:
        traceback.print_exception(error)
    message = " ".join(str(error).split("\n")[:1]) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)


def _close_stderr() -> None:
    """Points file descriptor 2 at /dev/null: after a user error's one line, what library threads
    still report while the interpreter shuts down (Orbax's workers after a failed read schedule
    callbacks on a closed asyncio loop; at shutdown those reports bypass `sys.unraisablehook`) would
    follow it."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def run(main: Callable[[list[str]], Any], *, config=None, ranges: Optional[Mapping[str, Any]] = None) -> None:
    """`absl.app.run(main)` with the behaviour of the module docstring. `config`: the script's
    config flag (its file's RANGES are checked, with `ranges` added)."""

    def wrapped(argv):
        quiet_library_logging()
        try:
            if config is not None:
                check_config(config.value, {**declared_ranges(config), **(ranges or {})}, config.name)
            return main(argv)
        except USER_ERRORS as e:
            report_error(e)
            if not verbose():
                _close_stderr()
            sys.exit(1)

    _adopt_shared_flags()
    app.run(wrapped)
