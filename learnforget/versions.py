"""The versions of learnforget and of the libraries whose versions change its numbers.

One list, read by `learnforget --version` and stored with each study (the report's environment table).
Read from the installed packages' metadata: no import of torch, so `--version` answers at once.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# The libraries a study's numbers depend on; lm-eval is optional (the `harness` extra) and listed when present.
PACKAGES = ("learnforget", "torch", "transformers", "peft", "accelerate", "datasets", "lm-eval")


def package_versions() -> dict[str, str]:
    """{package: installed version} for each of PACKAGES that is installed, in that order."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
