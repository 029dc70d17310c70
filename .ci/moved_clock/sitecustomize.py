"""Moves the wall clock of every Python process that starts with this folder on its PYTHONPATH
(pytest, and every process it starts: dagster dev, the step processes, the emulator, moto) by
$SOCIAL_ENRICH_CLOCK_SHIFT_DAYS days, so .ci/run can prove the suite passes on any date.

time-machine moves time.time, datetime.now, date.today and friends, and leaves the monotonic
clocks alone, so timed waits behave (libfaketime 0.9.10 moves those too, and a Python 3.11 wait
with a timeout under it never returns). gRPC alone keeps the real clock: its Python layer turns
time.time() into deadlines that its C core waits for on the real clock, so a moved one would make
every short wait last the whole shift (dagster dev's code servers would never answer).
"""

import datetime as _dt
import importlib.abc as _abc
import importlib.util as _util
import os as _os
import sys as _sys
import time as _time
import types as _types

_GRPC_MODULES = {"grpc._cython.cygrpc", "grpc._channel", "grpc._server", "grpc._common", "grpc._utilities"}


class _RealClockForGrpc(_abc.MetaPathFinder, _abc.Loader):
    def __init__(self, real_time):
        self._clock = _types.SimpleNamespace(**{n: getattr(_time, n) for n in dir(_time) if not n.startswith("_")})
        self._clock.time = real_time

    def find_spec(self, name, path=None, target=None):
        if name not in _GRPC_MODULES:
            return None
        _sys.meta_path.remove(self)  # find the real module, then come back
        try:
            spec = _util.find_spec(name)
        finally:
            _sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Patched(spec.loader, self._clock)
        return spec


class _Patched(_abc.Loader):
    def __init__(self, loader, clock):
        self._loader, self._clock = loader, clock

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.time = self._clock


_shift = _os.environ.get("SOCIAL_ENRICH_CLOCK_SHIFT_DAYS")
try:
    import time_machine as _time_machine
except ImportError:  # a Python without the project's dev extras (a venv a test builds): its own clock
    _shift = None
if _shift:
    _sys.meta_path.insert(0, _RealClockForGrpc(_time_machine.escape_hatch.time.time))
    _time_machine.travel(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=int(_shift)), tick=True).start()
