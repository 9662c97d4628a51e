"""`terraform validate` of terraform/ against the real google provider's schema, offline.

For each pinned provider release below: fetch its prebuilt CDK package with the registry's
own client (npm, or pip for CDK Terrain's releases), recover the schema (`cdktf_schema`,
cached in .cache/terraform-schemas/ by package version), serve it (`provider_server`) and run
`terraform init -backend=false` + `terraform validate` on a copy of terraform/ attached to it
through TF_REATTACH_PROVIDERS.

The releases pinned are the lowest that versions.tf allows (so its lower bound is a checked
fact: the release before it lacks google_cloud_run_v2_worker_pool) and the newest below its
upper bound. tests/gcp/test_terraform.py checks that versions.tf and this table agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cdktf_schema import package_schema

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "terraform-schemas"


@dataclass(frozen=True)
class SchemaSource:
    """A provider release and the registry package generated from its schema."""

    address: str  # registry.terraform.io/hashicorp/google
    provider_version: str  # the release the package was generated from
    registry: str  # "npm" or "pypi"
    package: str
    package_version: str

    @property
    def cache_file(self) -> Path:
        return CACHE / f"{self.package.replace('/', '+')}-{self.package_version}.json"


GOOGLE = "registry.terraform.io/hashicorp/google"
RANDOM = "registry.terraform.io/hashicorp/random"
GOOGLE_RELEASES = [
    # The lowest release versions.tf allows (6.36.1 lacks google_cloud_run_v2_worker_pool).
    SchemaSource(GOOGLE, "6.37.0", "npm", "@cdktf/provider-google", "14.36.0"),
    # The newest 7.x: CDKTF stopped at 6.50; CDK Terrain (cdktn) continues it on PyPI.
    SchemaSource(GOOGLE, "7.46.1", "pypi", "cdktn-provider-google", "20.3.1"),
]
RANDOM_RELEASE = SchemaSource(RANDOM, "3.7.2", "npm", "@cdktf/provider-random", "12.0.1")


def package_tarball(source: SchemaSource, workdir: Path) -> Path:
    """The npm tarball of `source` (for a PyPI release: the one its jsii wheel embeds)."""
    if source.registry == "npm":
        subprocess.run(
            ["npm", "pack", "--silent", f"{source.package}@{source.package_version}"],
            cwd=workdir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tarball,) = workdir.glob("*.tgz")
        return tarball
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        + ["--disable-pip-version-check", "--dest", str(workdir)]
        + [f"{source.package}=={source.package_version}"],
        check=True,
    )
    (wheel,) = workdir.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [name for name in archive.namelist() if name.endswith(".jsii.tgz")]
        return Path(archive.extract(member, workdir))


def cached_schema(source: SchemaSource) -> Path:
    """The schema JSON of `source`, fetched and extracted once per package version."""
    if not source.cache_file.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as workdir:
            schema = package_schema(package_tarball(source, Path(workdir)))
        if schema["provider_version"] != source.provider_version:
            raise SystemExit(
                f"{source.package}@{source.package_version} was generated from "
                f"{schema['provider_version']}, not {source.provider_version}: fix the table"
            )
        partial = source.cache_file.with_suffix(".partial")
        partial.write_text(json.dumps(schema))
        partial.replace(source.cache_file)
    return source.cache_file


def validate(google: SchemaSource, configuration: Path) -> bool:
    """Run terraform init + validate of `configuration` against one google release."""
    schemas = [f"{google.address}={cached_schema(google)}"]
    schemas.append(f"{RANDOM_RELEASE.address}={cached_schema(RANDOM_RELEASE)}")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("provider_server.py")), *schemas],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        reattach = server.stdout.readline().strip()
        if not reattach:
            raise SystemExit("the schema-only provider did not start")
        with tempfile.TemporaryDirectory() as workdir:
            copy = Path(workdir) / "terraform"
            shutil.copytree(
                configuration, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*")
            )
            # The configuration reads the image's dagster.yaml (the run-worker job's name).
            for outside in ("deploy/dagster.yaml",):
                if (configuration.parent / outside).is_file():
                    (copy.parent / outside).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(configuration.parent / outside, copy.parent / outside)
            env = os.environ | {
                "TF_REATTACH_PROVIDERS": reattach,
                "TF_IN_AUTOMATION": "1",
                "TF_CLI_CONFIG_FILE": os.devnull,  # no user settings, no warning about them
            }
            env.pop("TF_CLI_ARGS", None)
            terraform = ["terraform", f"-chdir={copy}"]
            init = subprocess.run(
                [*terraform, "init", "-backend=false", "-input=false", "-no-color"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if init.returncode != 0:
                print(init.stdout + init.stderr)
                return False
            result = subprocess.run(
                [*terraform, "validate", "-no-color"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            label = f"hashicorp/google {google.provider_version}"
            print(f"== terraform validate against {label}: {result.stdout.strip()}")
            if result.returncode != 0:
                print(result.stderr)
            return result.returncode == 0
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


def main() -> int:
    configuration = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "terraform"
    results = [validate(release, configuration) for release in GOOGLE_RELEASES]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
