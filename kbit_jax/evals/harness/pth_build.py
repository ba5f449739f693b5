"""setup.cfg's build_py (`[options] cmdclass`): adds kbit_jax_harness.pth to site-packages,
whose one line registers the `kbit` model with lm-evaluation-harness whenever lm_eval is
imported (hook.py; it imports nothing heavy), so `lm_eval --model kbit` works after
`pip install kbit-jax[harness]`. setuptools loads this file by path at build time; nothing
imports it at run time. A wheel installs build_lib's root into site-packages; an editable
wheel (`pip install -e`) installs the directory editable_wheel points `install` at, and
its build_py copies nothing."""

import pathlib

from setuptools.command.build_py import build_py

PTH = "kbit_jax_harness.pth"
PTH_LINE = "import kbit_jax.evals.harness.hook as _kbit_hook; _kbit_hook.install()\n"


class BuildPyWithPth(build_py):
  def run(self):
    super().run()
    root = self.distribution.get_command_obj("install").install_lib if self.editable_mode else None
    path = pathlib.Path(root or self.build_lib) / PTH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PTH_LINE)

  def get_outputs(self, include_bytecode=True):
    return super().get_outputs(include_bytecode) + [str(pathlib.Path(self.build_lib) / PTH)]
