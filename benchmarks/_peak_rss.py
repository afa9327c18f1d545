"""Runs one benchmark case once in this process and prints its peak RSS in MiB.

Usage: python _peak_rss.py BENCH_FILE CASE JSON_PARAMS
"""

import importlib.util
import json
import resource
import sys

path, case, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = importlib.util.spec_from_file_location("bench_case", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
getattr(module, case)(**params)()


def peak_mib() -> float:
    # VmHWM is this process's own high-water mark. ru_maxrss is not: on Linux it keeps the
    # RSS of the parent at fork time across exec, so every case run from a large pytest
    # process would report at least the parent's size.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


print(peak_mib())
