"""Builds the fscore Cython/C extensions; all metadata lives in pyproject.toml.

FSCORE_DEBUG=1 turns bounds checks, wraparound and -O0 -g back on (for a CI
debug run or a debugger); FSCORE_SANITIZE=1 adds ASan/UBSan flags.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FSCORE_DEBUG") == "1"
SANITIZE = os.environ.get("FSCORE_SANITIZE") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
ldflags = []
if SANITIZE:
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]

# The C parts (CRC32C, record codec, seqlock helpers) are compiled into every
# extension that needs them; CMakeLists.txt builds the same sources as a library
# for the C unit tests.
C_SOURCES = sorted(glob.glob("src/fscore/c/*.c"))

extensions = [
    Extension(
        f"fscore.{os.path.splitext(os.path.basename(pyx))[0]}",
        [pyx] + C_SOURCES,
        include_dirs=[numpy.get_include(), "src/fscore/c"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        # kafkafetch dlopen()s the librdkafka confluent-kafka loaded (in libc since glibc 2.34)
        libraries=["dl"] if pyx.endswith("kafkafetch.pyx") else [],
    )
    for pyx in sorted(glob.glob("src/fscore/*.pyx"))
]
# FSCORE_ONLY=table,wal builds just those modules (handy while another module
# is mid-edit); an install always builds everything.
ONLY = [n for n in os.environ.get("FSCORE_ONLY", "").split(",") if n]
if ONLY:
    extensions = [e for e in extensions if e.name.split(".")[-1] in ONLY]



def generate_grpc_code() -> None:
    """fsapp.grpc's message and service classes from its .proto files
    (Feast's serving contract), generated at build time by grpcio-tools
    next to the protos (src/fsapp/grpc/protos/**/*_pb2*.py, not in git)."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(glob.glob("src/fsapp/grpc/protos/**/*.proto", recursive=True))
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    if protoc.main(["grpc_tools.protoc", "-Isrc", f"-I{well_known}", "--python_out=src", "--grpc_python_out=src",
                    *protos]) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {protos}")


if not ONLY:
    generate_grpc_code()

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, quiet=True, nthreads=2),
    # two cores on our machines: compile the extensions side by side
    options={"build_ext": {"parallel": 2}},
)
