"""The schema of a Terraform provider, recovered from its prebuilt CDKTF (or cdktn) package.

No provider binary can be downloaded where CI runs, but npm serves the prebuilt CDK for
Terraform packages (`@cdktf/provider-google`, `@cdktf/provider-random`), which are generated
from the provider's own schema (`terraform providers schema -json`). Each module
`lib/<resource>/index.js` carries its TypeScript source in an inline source map, and the
generator writes one line per schema attribute there::

    // location - computed: false, optional: false, required: true
    private _location?: string;
    // template - computed: false, optional: false, required: true
    private _template = new CloudRunV2JobTemplateOutputReference(this, "template");
    // env - computed: false, optional: true, required: false
    private _env = new CloudRunV2JobTemplateTemplateContainersEnvList(this, "env", true);

From those lines this module rebuilds the schema in the shape of `terraform providers schema
-json` (attributes with their cty type and required/optional/computed flags; nested blocks with
their nesting mode and item limits), which `provider_server` serves to Terraform.

What the generated source does not say, and how it is filled in:
  * list or set for a string list: the getter wraps sets in `Fn.tolist`;
  * a block with at most one item: the generator gives it an `...OutputReference` (a single
    object) instead of a `...List`; the provider's schema says MaxItems 1;
  * a block that is required has MinItems 1.
Computed-only nested objects are attributes (lists of objects), as the SDK presents them.
"""

from __future__ import annotations

import base64
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Block = dict[str, Any]

_CLASS = re.compile(r"^export class (\w+) extends cdktf\.(\w+) \{", re.MULTILINE)
_FIELD = re.compile(
    r"^  // (\w+) - computed: (true|false), optional: (true|false), required: (true|false)\n",
    re.MULTILINE,
)
_PROVIDER_VERSION = re.compile(r"providerVersion: '([\d.]+)'")
_SOURCE_MAP = re.compile(r"sourceMappingURL=data:application/json;base64,(\S+)")
_TF_TYPE = re.compile(r'public static readonly tfResourceType = "(\w+)";')
_NESTED_LIST = re.compile(r'= new (\w+)List\(this, "\w+", (true|false)\)')
_NESTED_ONE = re.compile(r'= new (\w+)OutputReference\(this, "\w+"\)')
_CDKTF_MAP = re.compile(r"= new cdktf\.(\w+)\(this")
_PRIVATE = re.compile(r"private _\w+\?: (.+?); ?$", re.MULTILINE)
_GETTER = re.compile(r"this\.(get\w+Attribute|interpolationForAttribute)\(")
_INTERFACE = re.compile(r"^export interface (\w+) \{\n(.*?)^\}", re.MULTILINE | re.DOTALL)
_INTERFACE_FIELD = re.compile(
    r"#(\w+) \w+#\w+\}\n\s*\*/\n\s*readonly \w+(\?)?: (.+?);$", re.MULTILINE
)

_TS_TYPES: dict[str, Any] = {
    "string": "string",
    "number": "number",
    "boolean | cdktf.IResolvable": "bool",
    "string[]": ["list", "string"],
    "number[]": ["list", "number"],
    "{ [key: string]: string }": ["map", "string"],
    "{ [key: string]: number }": ["map", "number"],
    "{ [key: string]: boolean | cdktf.IResolvable } | cdktf.IResolvable": ["map", "bool"],
    "{ [key: string]: boolean }": ["map", "bool"],
}
_GETTER_TYPES: dict[str, Any] = {
    "getStringAttribute": "string",
    "getNumberAttribute": "number",
    "getBooleanAttribute": "bool",
    "getListAttribute": ["list", "string"],
    "getNumberListAttribute": ["list", "number"],
    "getStringMapAttribute": ["map", "string"],
    "getNumberMapAttribute": ["map", "number"],
    "getBooleanMapAttribute": ["map", "bool"],
    "getAnyMapAttribute": ["map", "dynamic"],
    "interpolationForAttribute": "dynamic",
}
_CDKTF_MAPS: dict[str, Any] = {
    "StringMap": ["map", "string"],
    "NumberMap": ["map", "number"],
    "BooleanMap": ["map", "bool"],
    "AnyMap": ["map", "dynamic"],
    "StringListMap": ["map", ["list", "string"]],
    "NumberListMap": ["map", ["list", "number"]],
    "StringMapList": ["list", ["map", "string"]],
    "NumberMapList": ["list", ["map", "number"]],
    "BooleanMapList": ["list", ["map", "bool"]],
    "AnyMapList": ["list", ["map", "dynamic"]],
    "StringListList": ["list", ["list", "string"]],
    "NumberListList": ["list", ["list", "number"]],
}


class SchemaSourceError(ValueError):
    """A package module whose generated source does not have the expected shape."""


def typescript_source(module_js: str, where: str) -> str:
    """The TypeScript source of a compiled module, from its inline source map."""
    found = _SOURCE_MAP.search(module_js)
    if found is None:
        raise SchemaSourceError(f"{where}: no inline source map; is this a CDKTF provider package?")
    source = json.loads(base64.b64decode(found.group(1)))["sourcesContent"][0]
    # CDK Terrain (cdktn), the community continuation of CDKTF, generates the same code under
    # its own namespace.
    return source.replace("cdktn.", "cdktf.")


def _classes(source: str) -> dict[str, tuple[str, str]]:
    """Class name -> (base class, body text) for every exported class of a module."""
    starts = list(_CLASS.finditer(source))
    classes = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(source)
        classes[match.group(1)] = (match.group(2), source[match.end() : end])
    return classes


def _fields(body: str) -> Iterator[tuple[str, dict[str, bool], str]]:
    matches = list(_FIELD.finditer(body))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
        flags = {
            "computed": match.group(2) == "true",
            "optional": match.group(3) == "true",
            "required": match.group(4) == "true",
        }
        yield match.group(1), flags, body[match.end() : end]


def _simple_type(text: str, where: str) -> Any:
    cdktf_map = _CDKTF_MAP.search(text)
    if cdktf_map:
        return _CDKTF_MAPS.get(cdktf_map.group(1), "dynamic")
    getter = _GETTER.search(text)
    private = _PRIVATE.search(text)
    if private and private.group(1) in _TS_TYPES:
        cty = _TS_TYPES[private.group(1)]
    elif getter:
        cty = _GETTER_TYPES.get(getter.group(1), "dynamic")
    else:
        raise SchemaSourceError(f"{where}: cannot tell the type of {text[:200]!r}")
    if "Fn.tolist(" in text and isinstance(cty, list) and cty[0] == "list":
        cty = ["set", cty[1]]
    return cty


class _Module:
    """One generated module: its classes, read on demand."""

    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where
        self.classes = _classes(source)
        self.interfaces = {m.group(1): m.group(2) for m in _INTERFACE.finditer(source)}
        self._open: set[str] = set()  # classes being read: a few schemas nest themselves

    def block(self, class_name: str) -> Block:
        self._open.add(class_name)
        try:
            return self._read_block(class_name)
        finally:
            self._open.discard(class_name)

    def _read_block(self, class_name: str) -> Block:
        base, body = self.classes[class_name]
        block: Block = {"attributes": {}, "block_types": {}}
        for name, flags, text in _fields(body):
            where = f"{self.where}: {class_name}.{name}"
            nested_list = _NESTED_LIST.search(text)
            nested_one = _NESTED_ONE.search(text)
            interface = _PRIVATE.search(text)
            element = (
                (nested_list or nested_one).group(1) + "OutputReference"
                if (nested_list or nested_one)
                else ""
            )
            if element in self._open:
                block["attributes"][name] = {"type": "dynamic", **flags}
            elif element:
                nesting = "single" if element.endswith("TimeoutsOutputReference") else "list"
                if nested_list and nested_list.group(2) == "true":
                    nesting = "set"
                self._nested(block, name, flags, self.block(element), nesting, bool(nested_one))
            elif (
                base == "TerraformProvider"
                and interface
                and interface.group(1).split("[")[0] in (self.interfaces)
            ):
                nested = self._interface_block(interface.group(1).split("[")[0])
                self._nested(block, name, flags, nested, "list", "[]" not in interface.group(1))
            else:
                block["attributes"][name] = {"type": _simple_type(text, where), **flags}
        return block

    def _interface_block(self, interface: str) -> Block:
        attributes = {}
        for match in _INTERFACE_FIELD.finditer(self.interfaces[interface]):
            optional = match.group(2) == "?"
            cty = _TS_TYPES.get(match.group(3), "dynamic")
            attributes[match.group(1)] = {
                "type": cty,
                "computed": False,
                "optional": optional,
                "required": not optional,
            }
        return {"attributes": attributes, "block_types": {}}

    @staticmethod
    def _nested(
        block: Block, name: str, flags: dict[str, bool], nested: Block, nesting: str, one: bool
    ) -> None:
        if flags["computed"] and not flags["optional"] and not flags["required"]:
            kind = "set" if nesting == "set" else "list"
            block["attributes"][name] = {"type": [kind, object_type(nested)], **flags}
            return
        block["block_types"][name] = {
            "nesting_mode": nesting,
            "block": nested,
            "min_items": 1 if flags["required"] and nesting != "single" else 0,
            "max_items": 1 if one and nesting != "single" else 0,
        }


def object_type(block: Block) -> list[Any]:
    """The cty object type of a block's values (what a computed nested object looks like)."""
    members = {name: attribute["type"] for name, attribute in block["attributes"].items()}
    for name, nested in block["block_types"].items():
        inner = object_type(nested["block"])
        members[name] = inner if nested["nesting_mode"] == "single" else ["list", inner]
    return ["object", members]


def module_schema(sources: list[str], where: str) -> tuple[str, str, Block] | None:
    """(kind, type name, schema) of one generated module; kind is provider, resource or
    data_source. `sources` are the TypeScript sources of the module's files (large resources
    put their nested classes in `index-structs/structsN`). None for a module that declares no
    Terraform type."""
    module = _Module("\n".join(sources), where)
    for class_name, (base, body) in module.classes.items():
        kind = {
            "TerraformProvider": "provider",
            "TerraformResource": "resource",
            "TerraformDataSource": "data_source",
        }.get(base)
        if kind is None:
            continue
        type_name = _TF_TYPE.search(body)
        if type_name is None:
            raise SchemaSourceError(f"{where}: {class_name} names no tfResourceType")
        return kind, type_name.group(1), module.block(class_name)
    return None


def package_schema(tarball: Path) -> dict[str, Any]:
    """The provider schema of an `npm pack` tarball of a CDKTF provider package.

    Shape (as `terraform providers schema -json`, one provider): {"provider_version",
    "provider": block, "resource_schemas": {type: block}, "data_source_schemas": {type: block}}.
    """
    modules: dict[str, list[str]] = {}
    version = None
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = member.name.split("/")
            if len(parts) < 4 or parts[:2] != ["package", "lib"] or not parts[-1].endswith(".js"):
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            module_js = handle.read().decode()
            where = f"{tarball.name}:{member.name}"
            modules.setdefault(parts[2], []).append(typescript_source(module_js, where))
            if parts[2] == "provider" and version is None:
                found_version = _PROVIDER_VERSION.search(module_js)
                version = found_version.group(1) if found_version else None
    schema: dict[str, Any] = {
        "provider_version": version,
        "resource_schemas": {},
        "data_source_schemas": {},
    }
    for name, sources in sorted(modules.items()):
        found = module_schema(sources, f"{tarball.name}:lib/{name}")
        if found is None:
            continue
        kind, type_name, block = found
        if kind == "provider":
            schema["provider"] = block
        else:
            schema[f"{kind}_schemas"][type_name] = block
    if "provider" not in schema:
        raise SchemaSourceError(f"{tarball}: no provider module (lib/provider/index.js)")
    return schema
