"""Builds the C parts of fscore with CMake and runs their CTest tests
(CRC32C check values, record codec, seqlock under concurrent readers)."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_cmake_build_and_ctest_pass(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is not installed; .ci/run installs it (apt-get install cmake)")
    build = tmp_path / "build"
    env = dict(os.environ)
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True, env=env)
    subprocess.run([cmake, "--build", str(build), "-j2"], check=True, capture_output=True, env=env)
    res = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tests passed" in res.stdout
