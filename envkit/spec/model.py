"""Image specs: the YAML files under images/, loaded into strict pydantic models.

Every value that can reach the rendered Dockerfile is checked here against an allowlist for its
field, so nothing later has to quote its way out of a hostile spec. Errors name the file, the field
and the offending character, and are raised before anything is written.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from envkit.errors import SpecError
from envkit.jsonio import canonical_text

# Characters each kind of field may contain. Anything else is named in the error.
_PIP_CHARS = r"A-Za-z0-9._\-\[\],<>=!~* "
_APT_CHARS = r"a-z0-9.+\-=:~A-Z"
_VALUE_CHARS = r"A-Za-z0-9 _.,:/=+@%\-"
_URL_CHARS = r"A-Za-z0-9._~:/\-"

_CHAR_NAMES = {
    "\n": "newline",
    "\r": "carriage return",
    "\t": "tab",
    "`": "backtick",
    "$": "dollar sign",
    ";": "semicolon",
    "|": "pipe",
    "&": "ampersand",
    "'": "single quote",
    '"': "double quote",
    "\\": "backslash",
    "<": "less-than sign",
    ">": "greater-than sign",
    "(": "parenthesis",
    ")": "parenthesis",
    " ": "space",
}

PIP_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?\Z")
APT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.\-]+\Z")
APT_VERSION_RE = re.compile(r"^[A-Za-z0-9.+~:\-]+\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?\Z")
IMAGE_NAME_RE = re.compile(r"^[a-z0-9]+([._\-][a-z0-9]+)*\Z")
IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
DIGEST_REF_RE = re.compile(r"^[a-z0-9]+([._\-/][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9._\-]+)*@sha256:[0-9a-f]{64}\Z")
MIRROR_RE = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]+)?(/[A-Za-z0-9._~\-/]*)?\Z")
SUITE_RE = re.compile(r"^[a-z]+(-[a-z]+)?\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_\-]{0,31}\Z")
VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?\Z")
PYTHON_RE = re.compile(r"^3\.\d{1,2}\Z")
CUDA_RE = re.compile(r"^(\d+\.\d+|cpu)\Z")
RESERVED_LABEL_PREFIX = "io.envkit."
MAX_SPEC_BYTES = 1 << 20


def describe_char(char: str) -> str:
    name = _CHAR_NAMES.get(char)
    if name:
        return f"{name} {char!r}"
    if not char.isprintable():
        return f"control character {char!r}"
    return repr(char)


def first_bad_char(value: str, allowed: str) -> str | None:
    bad = re.search(f"[^{allowed}]", value)
    if bad is None:
        return None
    found = bad.group(0)
    # "$(" is the classic command substitution: say so when that is what we saw.
    if found == "$" and value[bad.start() : bad.start() + 2] == "$(":
        return "$("
    return found


def check_chars(value: str, allowed: str, what: str) -> str:
    bad = first_bad_char(value, allowed)
    if bad is not None:
        shown = "command substitution '$('" if bad == "$(" else describe_char(bad)
        raise ValueError(f"{shown} is not allowed in {what}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bootstrap(_Strict):
    """A Debian base made locally with mmdebstrap: no registry needed."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: Literal["minbase", "essential", "apt"] = "minbase"

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        if not SUITE_RE.match(value):
            check_chars(value, "a-z\\-", "a Debian suite name")
            raise ValueError(f"{value!r} is not a Debian suite name")
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str) -> str:
        check_chars(value, _URL_CHARS, "a mirror URL")
        if not MIRROR_RE.match(value):
            raise ValueError(f"{value!r} is not an http(s) mirror URL")
        return value.rstrip("/")


class BaseSource(_Strict):
    """Either a local bootstrap of a Debian suite or a registry image pinned by digest."""

    bootstrap: Bootstrap | None = None
    image: str | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is None:
            return value
        check_chars(value, r"a-z0-9._\-/:@", "an image reference")
        if not DIGEST_REF_RE.match(value):
            raise ValueError(f"{value!r} must be pinned by digest (name@sha256:<64 hex>)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> BaseSource:
        if (self.bootstrap is None) == (self.image is None):
            raise ValueError("give exactly one of base.bootstrap or base.image")
        return self


class TorchSpec(_Strict):
    version: str
    cuda: str
    index: Literal["pypi", "pytorch"] = "pypi"

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        check_chars(value, "0-9.", "a torch version")
        if not VERSION_RE.match(value):
            raise ValueError(f"{value!r} is not a torch version like 2.8 or 2.8.0")
        return value

    @field_validator("cuda")
    @classmethod
    def _cuda(cls, value: str) -> str:
        check_chars(value, "0-9a-z.", "a CUDA version")
        if not CUDA_RE.match(value):
            raise ValueError(f"{value!r} is not a CUDA version like 12.8 (or 'cpu')")
        return value


class UserSpec(_Strict):
    name: str = "envkit"
    uid: Annotated[int, Field(ge=1000, le=65000)] = 1000

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        check_chars(value, r"a-z0-9_\-", "a user name")
        if not USER_RE.match(value):
            raise ValueError(f"{value!r} is not a valid user name")
        return value


def _check_pip(value: str) -> str:
    check_chars(value, _PIP_CHARS, "a pip requirement")
    try:
        req = Requirement(value)
    except InvalidRequirement as exc:
        raise ValueError(f"{value!r} is not a PEP 508 requirement: {exc}") from None
    if req.url or req.marker:
        raise ValueError(f"{value!r}: URLs and markers are not allowed; pin a version from the index")
    return value


def _check_apt(value: str) -> str:
    check_chars(value, _APT_CHARS, "an apt package")
    name, _, version = value.partition("=")
    if not APT_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a Debian package name")
    if version and not APT_VERSION_RE.match(version):
        raise ValueError(f"{version!r} is not a Debian version")
    return value


PipRequirement = Annotated[str, AfterValidator(_check_pip)]
AptPackage = Annotated[str, AfterValidator(_check_apt)]


class ImageSpec(_Strict):
    name: str
    tag: str
    variant: Literal["runtime", "devel", "dev"] = "runtime"
    description: str = ""
    base: BaseSource
    python: str
    torch: TorchSpec
    torchvision: str | None = None
    pip: tuple[PipRequirement, ...] = ()
    apt: tuple[AptPackage, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    user: UserSpec = UserSpec()
    source_date_epoch: Annotated[int, Field(ge=0)] = 0
    platform: Literal["linux/amd64", "linux/arm64"] = "linux/amd64"
    # A PyPI mirror (PEP 503 simple index) and more indexes: where wheels come from, never which
    # wheels (the lock's hashes decide), so they are no part of the spec's digest.
    index_url: str | None = None
    extra_index_url: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        check_chars(value, r"a-z0-9._\-", "an image name")
        if not IMAGE_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid image name")
        return value

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        check_chars(value, r"A-Za-z0-9_.\-", "an image tag")
        if not IMAGE_TAG_RE.match(value):
            raise ValueError(f"{value!r} is not a valid image tag")
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return check_chars(value, _VALUE_CHARS + "()", "a description")

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        check_chars(value, "0-9.", "a Python version")
        if not PYTHON_RE.match(value):
            raise ValueError(f"{value!r} is not a Python version like 3.11")
        return value

    @field_validator("torchvision")
    @classmethod
    def _torchvision(cls, value: str | None) -> str | None:
        if value is not None:
            check_chars(value, "0-9.", "a torchvision version")
            if not VERSION_RE.match(value):
                raise ValueError(f"{value!r} is not a version like 0.23.0")
        return value

    @field_validator("index_url")
    @classmethod
    def _index_url(cls, value: str | None) -> str | None:
        return _plain_url(value, "index_url") if value is not None else None

    @field_validator("extra_index_url")
    @classmethod
    def _extra_index_url(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_plain_url(item, "extra_index_url") for item in value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not ENV_NAME_RE.match(key):
                bad = first_bad_char(key, "A-Za-z0-9_") or key[:1]
                raise ValueError(f"{describe_char(bad)} is not allowed in env name {key!r}")
            check_chars(item, _VALUE_CHARS, f"the value of env {key}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not LABEL_KEY_RE.match(key):
                bad = first_bad_char(key, r"a-z0-9.\-") or key[:1]
                raise ValueError(f"{describe_char(bad)} is not allowed in label key {key!r}")
            if key == RESERVED_LABEL_PREFIX.rstrip(".") or key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(
                    f"label key {key!r} is reserved: envkit sets the {RESERVED_LABEL_PREFIX}* labels itself"
                )
            check_chars(item, _VALUE_CHARS, f"the value of label {key}")
        return value

    @property
    def ref(self) -> str:
        """The catalog name, e.g. ``pytorch-cuda:2.8``."""
        return f"{self.name}:{self.tag}"

    @property
    def image_tag(self) -> str:
        """The Docker tag envkit gives the built image."""
        return f"envkit/{self.name}:{self.tag}"

    def canonical_json(self) -> str:
        return canonical_text(self.model_dump(mode="json", exclude=set(SOURCE_FIELDS)))

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()


# Where files come from, not what they are: left out of the digest.
SOURCE_FIELDS = ("index_url", "extra_index_url")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/\-]*)?\Z")


def _plain_url(value: str, field: str) -> str:
    if "@" in urlsplit(value).netloc:
        raise ValueError(
            f"{field}: a spec must not hold credentials; give the URL with them in ENVKIT_INDEX_URL "
            "or --index-url"
        )
    if not _URL_RE.match(value):
        raise ValueError(f"{field}: {value!r} is not an http(s) URL of a simple index")
    return value


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def parse_spec(data: Any, source: str) -> ImageSpec:
    """Validate already-parsed YAML data; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise SpecError(source, "", "a spec must be a YAML mapping")
    try:
        return ImageSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        elif first["type"] == "missing":
            message = "required field is missing"
        raise SpecError(source, _field_path(tuple(first["loc"])), message) from None


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML that refuses what a spec never needs: duplicate keys, anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "anchors and aliases are not allowed in a spec", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_spec_text(raw: bytes, source: str) -> ImageSpec:
    """Decode, parse and validate a spec file's bytes; every failure is a SpecError (exit 2)."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"the file is larger than {MAX_SPEC_BYTES} bytes; a spec is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(source, "", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(source, "", "nested too deeply") from None
    try:
        return parse_spec(data, source)
    except RecursionError:
        raise SpecError(source, "", "nested too deeply") from None


def load_spec(path: Path, *, display: str | None = None) -> ImageSpec:
    source = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(source, "", f"cannot read spec: {exc.strerror}") from None
    return parse_spec_text(raw, source)
