"""Memory of one model variant, measured in a fresh process (so the order of variants cannot matter).

``measure(module, variant, args)`` starts ``python memory_child.py <module> <variant> <json args>``;
the child imports ``<module>`` (a benchmark beside this file) and calls its
``build_for_memory(variant, args, warmup) -> run`` twice: first with ``warmup=True`` (a tiny model
of the same kind: loads the libraries, runs kernel self-checks and compiles, so their pages do
not count), then for real. It reports, relative to the resident set just before the real build:

* ``rss_model_bytes``: resident memory held once the model is built and quantized (the cost of
  keeping the model loaded);
* ``rss_peak_inference_bytes``: peak resident memory over two calls of ``run()`` (weights plus
  activations; the peak is reset with ``/proc/self/clear_refs`` before the calls);
* ``process_peak_rss_bytes``: the whole child process's peak resident set (``VmHWM``), the warm-up
  and the float model before quantization included;
* ``cuda_max_allocated_bytes``: ``torch.cuda.max_memory_allocated()`` when CUDA is in use, else ``None``.

glibc keeps freed blocks below its (dynamic, up to 32 MB) mmap threshold in the heap, so the
resident set long remembers temporaries that are already free; the child runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors return to the system and the figures measure
live memory (``--malloc default`` in the callers keeps glibc's default instead).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(module_name: str, variant: str, args: dict) -> dict:
    import torch

    torch.set_num_threads(int(args.get("threads", 1)))
    sys.path.insert(0, HERE)
    module = importlib.import_module(module_name)
    with torch.no_grad():
        run = module.build_for_memory(variant, args, warmup=True)
        run()
        del run
        gc.collect()
        base = _status("VmRSS")
        run = module.build_for_memory(variant, args, warmup=False)
        gc.collect()
        model = _status("VmRSS") - base
        process_peak = _status("VmHWM")  # since exec (ru_maxrss would include the forked parent's)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak resident set (VmHWM) to the current one
        cuda = torch.cuda.is_available() and args.get("device", "cpu") == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run()
        run()
        peak = _status("VmHWM") - base
    return {"rss_model_bytes": model, "rss_peak_inference_bytes": peak,
            "process_peak_rss_bytes": max(process_peak, _status("VmHWM")),
            "cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None}


def measure(module_name: str, variant: str, args: dict, malloc: str = "fixed") -> dict:
    """Memory figures of ``variant`` (see the module docstring), from a fresh child process."""
    env = dict(os.environ, **(FIXED_MALLOC if malloc == "fixed" else {}))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "memory_child.py"), module_name, variant,
                           json.dumps(args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {variant!r} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["malloc"] = "glibc default" if malloc != "fixed" else "glibc, MALLOC_MMAP_THRESHOLD_=65536"
    return result


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(_child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
