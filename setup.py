"""minicnn (a from-scratch autograd CNN library) and cmr (cardiac MR segmentation with it).

The distribution is called ``minicnn-cmr`` (PyPI already has packages named ``minicnn``,
``cmr`` and ``kernels``). The repository's top-level ``kernels/`` folder of CUDA sources is
installed as ``minicnn.kernels``, never as a top-level ``kernels`` module.
"""
from setuptools import setup

setup(
    name="minicnn-cmr",
    version="0.1.0",
    description="A readable from-scratch autograd/CNN library (NumPy + own CUDA kernels) and a "
                "cardiac MR U-Net built on it",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["minicnn", "minicnn.backend", "minicnn.backend.cuda", "minicnn.functional",
              "minicnn.nn", "minicnn.kernels", "cmr"],
    package_dir={"minicnn.kernels": "kernels"},
    package_data={"minicnn.kernels": ["*.cu", "*.cuh"],
                  "cmr": ["acdc_overlap.json", "models/*.npz", "models/README.md"]},
    install_requires=["numpy>=1.24", "scipy>=1.10", "pillow>=9", "tqdm>=4.60",
                      "matplotlib>=3.6"],
    extras_require={
        # torch is only the tests' oracle; install torch==2.13.0 (CPU) first to avoid a CUDA build
        "test": ["torch>=2.1", "pytest>=7", "hypothesis>=6.80", "nibabel>=5"],
        "cuda": ["cupy-cuda13x>=13"],
        # data parallelism (mpiexec -n N python -m cmr.train; docs/data_parallel.md): mpi4py
        # and MPICH's wheel, which brings an mpiexec; with [cuda] the gradients go over NCCL
        "mpi": ["mpi4py>=3.1", "mpich>=4"],
        "acdc": ["nibabel>=5"],
        "docs": ["mkdocs>=1.5", "mkdocs-material>=9", "pymdown-extensions>=10"],
    },
)
