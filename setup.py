"""igc_np: Interleaved Group Convolutions (ICCV 2017) from scratch on NumPy and CuPy."""
from setuptools import find_packages, setup

EXAMPLES = ["scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60", "scipy>=1.10"]
# data-parallel training over processes (igc_np/app/distributed.py): mpi4py, and MPICH from PyPI
# whose mpiexec launches the ranks (Windows gets mpich's empty placeholder wheel)
DIST = ["mpi4py>=3.1", "mpich"]
IMAGENET = ["Pillow>=9.1"]  # JPEG decoding for igc_np.app.imagenet (Image.draft, transform fillcolor)
NVIDIA_WHEELS = "platform_system == 'Linux' or platform_system == 'Windows'"

setup(
    name="igc_np",
    version="0.1.0",
    description="Interleaved Group Convolutions from scratch: a small autograd on NumPy/CuPy, "
                "hand-written CUDA kernels, and every network of the authors' code.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["igc_np", "igc_np.*"]),
    package_data={"igc_np": ["kernels/*.cu", "kernels/*.cuh", "emu/*.h"]},
    python_requires=">=3.10",
    # threadpoolctl: BLAS is held to one thread inside our own threaded regions (ops/parallel.py)
    install_requires=["numpy>=1.24", "threadpoolctl>=3.1"],
    # `igc_np` = `python -m igc_np`: the machine's devices, and train / evaluate / predict
    entry_points={"console_scripts": ["igc_np = igc_np.__main__:main"]},
    extras_require={
        # the teaching trainer: embedded digits data set, curves, progress bar, SVHN .mat files
        "examples": EXAMPLES,
        # the test suite: property tests, the trainer end to end, and the NVRTC compile check
        # of every .cu file (libnvrtc works without a GPU; cuda-pathfinder finds it, as CuPy 14
        # does) with cuobjdump/nvdisasm for the SASS report (those wheels exist for Linux and
        # Windows only), and mpiexec -n 2/3 training runs
        "test": ["pytest>=7", "hypothesis>=6.80", "cuda-pathfinder>=1.3.4"] + [f"{w}; {NVIDIA_WHEELS}" for w in (
            "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm")] + EXAMPLES + DIST + IMAGENET
        # the learners' notebook (examples/igc_tutorial.ipynb) executed top to bottom
        + ["nbclient>=0.9", "ipykernel>=6", "nbformat>=5.9"],
        "dist": DIST,
        # [ctk]: CuPy's extra that brings NVRTC and the CUDA headers (a driver-only machine lacks
        # both). One CuPy per environment: `cuda` for a CUDA 12 driver (>= 525), `cuda13` for a
        # CUDA 13 driver (>= 580); `nvidia-smi` prints the driver's "CUDA Version".
        "cuda": ["cupy-cuda12x[ctk]>=14,<15"],
        "cuda13": ["cupy-cuda13x[ctk]>=14,<15"],
        "imagenet": IMAGENET,
    },
)
