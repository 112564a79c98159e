"""Install-time build of qcuda's libcudart.so.13 (qcuda/library/interposer/build.py, cffi embedding).

`pip install .` puts the library in the wheel; `pip install -e .` builds it in the source tree,
where the editable install finds it. Everything else is in pyproject.toml.
"""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
INTERPOSER = Path("qcuda") / "library" / "interposer"


def build_cudart(out_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("qcuda_cudart_build", HERE / INTERPOSER / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(out_dir)


class BuildPyWithCudart(build_py):
    """build_py, then the CUDA runtime library next to the interposer's Python files."""

    def run(self) -> None:
        super().run()
        root = HERE if getattr(self, "editable_mode", False) else Path(self.build_lib)
        print(f"built {build_cudart(root / INTERPOSER / 'lib')}")


setup(cmdclass={"build_py": BuildPyWithCudart})
