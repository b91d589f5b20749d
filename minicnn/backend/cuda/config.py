"""The CUDA backend's configuration: which build of ``kernels/conv.cu`` the backend compiles.

One typed, frozen object, validated when it is made, read by the launchers through
``current()``. It is set explicitly (``configure`` or the ``configured`` context manager) or,
if nothing set it before the first convolution, made once from the environment variable
``MINICNN_CONV_VARIANT`` (a start-up default for the benchmarks, which time each build in its
own process; read once per process, never per launch)::

    from minicnn.backend.cuda import CudaConfig, configure, configured
    configure(CudaConfig())                                  # the shipped build
    configure(CudaConfig.from_variant("fastdiv+vec4"))       # two features only
    with configured(CudaConfig(features=())):                # "plain": no feature
        ...

Every feature is a compile-time switch of kernels/conv.cu that a GPU run measured faster
(benchmarks/NOTES.md entries 11 and 15): ``prefetch`` (the K loop software-pipelined),
``vec4`` (16-byte shared-memory reads of the register block's operands), ``fastdiv``
(divisions by multiply-high and shift), ``tiles`` (the 128x64 and 64x128 tiles and the
planner's cost model). The default is all four: on an H200 the U-Net's training step took
93.5 ms without any, 54.3 ms with the first three and 50.4 ms with all four. Pure Python.
"""
import contextlib
import dataclasses
import os

CONV_FEATURES = ("fastdiv", "prefetch", "tiles", "vec4")   # sorted: the order of a variant name
DEFAULT_FEATURES = CONV_FEATURES
ENV_VARIANT = "MINICNN_CONV_VARIANT"
# The builds the emulator and the compile tests check and benchmarks/bench_variants.sh times:
# none, each feature alone, the default of entry 11 and the shipped default.
VARIANTS = ("plain",) + CONV_FEATURES + ("fastdiv+prefetch+vec4", "+".join(DEFAULT_FEATURES))


@dataclasses.dataclass(frozen=True)
class CudaConfig:
    """The conv build: ``features``, a subset of CONV_FEATURES (any order; kept sorted)."""
    features: tuple = DEFAULT_FEATURES

    def __post_init__(self):
        features = self.features
        if isinstance(features, str) or not all(isinstance(f, str) for f in features):
            raise ValueError(f"CudaConfig: features must be a sequence of names from "
                             f"{list(CONV_FEATURES)}, got {features!r}")
        unknown = sorted(set(features) - set(CONV_FEATURES))
        if unknown or len(set(features)) != len(features):
            raise ValueError(f"CudaConfig: features {list(features)!r} must be distinct names "
                             f"from {list(CONV_FEATURES)}" +
                             (f" (unknown: {unknown})" if unknown else " (a name repeats)"))
        object.__setattr__(self, "features", tuple(sorted(features)))

    @classmethod
    def from_variant(cls, variant):
        """The build named ``variant``: ``"plain"`` (no feature) or a ``+``-joined set of
        features, as MINICNN_CONV_VARIANT and the benchmark reports write it."""
        if not isinstance(variant, str) or variant == "" or variant.strip() != variant:
            raise ValueError(f"{ENV_VARIANT}={variant!r}: expected 'plain' or a '+'-joined set "
                             f"of {list(CONV_FEATURES)}")
        if variant == "plain":
            return cls(features=())
        try:
            return cls(features=tuple(variant.split("+")))
        except ValueError:
            raise ValueError(f"{ENV_VARIANT}={variant!r}: expected 'plain' or a '+'-joined set "
                             f"of {list(CONV_FEATURES)}") from None

    @classmethod
    def from_env(cls, environ=None):
        """The build named by MINICNN_CONV_VARIANT in ``environ`` (default ``os.environ``),
        the default build where it is not set."""
        environ = os.environ if environ is None else environ
        variant = environ.get(ENV_VARIANT)
        return cls() if variant is None else cls.from_variant(variant)

    @property
    def variant(self):
        """The build's name: ``"plain"`` or its features joined by ``+`` (sorted)."""
        return "+".join(self.features) or "plain"

    def has(self, feature):
        """Whether the build has ``feature`` (a name of CONV_FEATURES)."""
        if feature not in CONV_FEATURES:
            raise ValueError(f"CudaConfig.has: unknown feature {feature!r}; expected one of "
                             f"{list(CONV_FEATURES)}")
        return feature in self.features

    def conv_options(self):
        """The NVRTC options of this build of kernels/conv.cu: every switch set, on or off."""
        return tuple(f"-DMINICNN_CONV_{f.upper()}={int(f in self.features)}"
                     for f in CONV_FEATURES)


_current = None     # the configuration in force; None until set or first read


def current():
    """The configuration in force: the last one ``configure`` set, or else the one made from
    the environment on the first call (and kept: the environment is read once)."""
    global _current
    if _current is None:
        _current = CudaConfig.from_env()
    return _current


def configure(config):
    """Make ``config`` (a CudaConfig) the configuration in force; returns the previous one.
    Kernels compiled under another configuration stay cached under their own options."""
    global _current
    if not isinstance(config, CudaConfig):
        raise TypeError(f"configure: expected a CudaConfig, got {type(config).__name__}")
    previous, _current = _current, config
    return previous


@contextlib.contextmanager
def configured(config):
    """``with configured(CudaConfig(...)):`` -- ``config`` in force inside the block only."""
    previous = configure(config)
    try:
        yield config
    finally:
        globals()["_current"] = previous
