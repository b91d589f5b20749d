"""The CUDA backend's configuration: which build of ``kernels/conv.cu`` the backend compiles,
which untimed changes it tries, and the convolutions' precision.

One typed, frozen object, validated when it is made, read by the launchers through
``current()``. It is set explicitly (``configure`` or the ``configured`` context manager) or,
if nothing set it before the first launch, made once from the environment variables
``MINICNN_CONV_VARIANT``, ``MINICNN_CUDA_UNTIMED`` and ``MINICNN_CUDA_PRECISION`` (start-up
defaults for the benchmarks, which time each configuration in its own process; read once per
process, never per launch)::

    from minicnn.backend.cuda import CudaConfig, configure, configured
    configure(CudaConfig())                                  # the shipped path
    configure(CudaConfig.from_variant("fastdiv+vec4"))       # two features only
    with configured(CudaConfig(features=())):                # "plain": no feature
        ...
    configure(CudaConfig(untimed=UNTIMED))                   # every untimed change on
    configure(CudaConfig(precision="tf32"))                  # float32 convs on tensor cores

Every feature is a compile-time switch of kernels/conv.cu that a GPU run measured faster
(benchmarks/NOTES.md entries 11 and 15): ``prefetch`` (the K loop software-pipelined),
``vec4`` (16-byte shared-memory reads of the register block's operands), ``fastdiv``
(divisions by multiply-high and shift), ``tiles`` (the 128x64 and 64x128 tiles and the
planner's cost model). The default is all four: on an H200 the U-Net's training step took
93.5 ms without any, 54.3 ms with the first three and 50.4 ms with all four.

``untimed`` names changes built after that last GPU run, checked against numpy_backend in the
CPU emulator and compiled by NVRTC, but never run on a GPU (benchmarks/NOTES.md entries
16-23). The shipped path holds only measured wins, so each is off by default and lives beside
the path that was timed; the first GPU run (benchmarks/gpu_check.sh) times them all on
against all off, and each that pays joins the default (its switch then goes).

``precision`` is ``"fp32"`` (the default: kernels/conv.cu, float32 products and sums) or
``"tf32"``: every float32 convolution then runs on the tensor cores (kernels/conv_tf32.cu),
operands rounded to TF32 and sums in fp32, as PyTorch's default (cuDNN with ``allow_tf32``)
and as ``numpy_backend.set_precision("tf32")`` emulates. It is a choice of the user, never a
default: fp32 stays the default until a GPU run shows TF32 training as accurate and faster
(benchmarks/NOTES.md entry 31). Pure Python.
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

# The untimed changes (sorted), each with its NOTES entry and what it does when on; off, the
# launchers take the path an H200 timed (entry 15, git 38d50f0).
UNTIMED = ("conv_relu", "narrow_1x1", "pool_div32", "relu_vec16", "upconv_bias", "xent_sums")
UNTIMED_ENTRIES = {
    "relu_vec16": (16, "ReLU kernels with 16-byte loads and stores (off: one element per thread)"),
    "pool_div32": (17, "max-pool index decomposed in 32 bits (off: 64-bit divisions)"),
    "xent_sums": (20, "the cross-entropy's sums in its own kernels (off: per-position loss, "
                      "then CuPy sums)"),
    "conv_relu": (21, "the ReLU after a convolution fused into its store (off: a separate "
                      "ReLU launch)"),
    "upconv_bias": (22, "the up-convolution's bias added in its kernel's store (off: a CuPy "
                        "broadcast add)"),
    "narrow_1x1": (23, "1x1 convolutions of at most 8 channels on per-pixel kernels (off: the "
                       "GEMM kernels)"),
}
ENV_UNTIMED = "MINICNN_CUDA_UNTIMED"
PRECISIONS = ("fp32", "tf32")
ENV_PRECISION = "MINICNN_CUDA_PRECISION"


def _sorted_names(field, names, allowed):
    """``names`` (a sequence of distinct names from ``allowed``) sorted; ValueError naming
    CudaConfig's ``field`` otherwise, in one line."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"CudaConfig: {field} must be a sequence of names from "
                         f"{list(allowed)}, got {names!r}")
    unknown = sorted(set(names) - set(allowed))
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"CudaConfig: {field} {list(names)!r} must be distinct names from "
                         f"{list(allowed)}" +
                         (f" (unknown: {unknown})" if unknown else " (a name repeats)"))
    return tuple(sorted(names))


@dataclasses.dataclass(frozen=True)
class CudaConfig:
    """The conv build: ``features``, a subset of CONV_FEATURES; ``untimed``, a subset of
    UNTIMED (default none), both in any order and kept sorted; and ``precision``, one of
    PRECISIONS (default ``"fp32"``)."""
    features: tuple = DEFAULT_FEATURES
    untimed: tuple = ()
    precision: str = "fp32"

    def __post_init__(self):
        for field, allowed in (("features", CONV_FEATURES), ("untimed", UNTIMED)):
            object.__setattr__(self, field, _sorted_names(field, getattr(self, field), allowed))
        if self.precision not in PRECISIONS:
            raise ValueError(f"CudaConfig: precision must be one of {list(PRECISIONS)}, got "
                             f"{self.precision!r}")

    @property
    def tensor_cores(self):
        """Whether float32 convolutions run on the tensor cores (``precision="tf32"``)."""
        return self.precision == "tf32"

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

    @staticmethod
    def parse_untimed(text):
        """The untimed changes named by ``text``: ``"none"``, ``"all"`` or a ``+``-joined set
        of UNTIMED, as MINICNN_CUDA_UNTIMED and the benchmark reports write them."""
        if text == "none":
            return ()
        if text == "all":
            return UNTIMED
        names = tuple(text.split("+")) if isinstance(text, str) else ()
        if not names or not set(names) <= set(UNTIMED) or len(set(names)) != len(names):
            raise ValueError(f"{ENV_UNTIMED}={text!r}: expected 'none', 'all' or a '+'-joined "
                             f"set of {list(UNTIMED)}")
        return names

    @classmethod
    def from_env(cls, environ=None):
        """The configuration named by MINICNN_CONV_VARIANT, MINICNN_CUDA_UNTIMED and
        MINICNN_CUDA_PRECISION in ``environ`` (default ``os.environ``); the default where they
        are not set."""
        environ = os.environ if environ is None else environ
        variant = environ.get(ENV_VARIANT)
        config = cls() if variant is None else cls.from_variant(variant)
        untimed = environ.get(ENV_UNTIMED)
        if untimed is not None:
            config = dataclasses.replace(config, untimed=cls.parse_untimed(untimed))
        precision = environ.get(ENV_PRECISION)
        if precision is not None:
            if precision not in PRECISIONS:
                raise ValueError(f"{ENV_PRECISION}={precision!r}: expected one of "
                                 f"{list(PRECISIONS)}")
            config = dataclasses.replace(config, precision=precision)
        return config

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

    def tries(self, change):
        """Whether the untimed ``change`` (a name of UNTIMED) is on."""
        if change not in UNTIMED:
            raise ValueError(f"CudaConfig.tries: unknown change {change!r}; expected one of "
                             f"{list(UNTIMED)}")
        return change in self.untimed

    @property
    def untimed_name(self):
        """The untimed changes on, as MINICNN_CUDA_UNTIMED writes them: ``"none"``, ``"all"``
        or their names joined by ``+``."""
        if not self.untimed:
            return "none"
        return "all" if self.untimed == UNTIMED else "+".join(self.untimed)

    def conv_options(self):
        """The NVRTC options of this build of kernels/conv.cu (and of conv_tf32.cu, which shares
        its problems and so their ``fastdiv`` switch): every switch set, on or off."""
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
