"""UEFI structures found in event data: variables, signature lists, device paths, GPT, load options.

Every decoder takes untrusted bytes and returns plain values or raises BAD_REQUEST (via
:class:`LeReader`); the caller decides whether a failure matters. Strings are made safe to
print (control characters escaped) and bounded in length.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import uuid
from dataclasses import dataclass

from shared.eventlog.reader import LeReader

MAX_TEXT = 4096  # characters kept from any string in event data
MAX_NAME_CHARS = 1024  # a UEFI variable name
MAX_PATH_NODES = 64
MAX_PARTITIONS = 256
MAX_SIGNATURES = 10_000

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
SHIM_LOCK = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_CERT_X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"

_SIG_TYPES = {
    "c1c41626-504c-4092-aca9-41f936934328": "sha256",
    "a5c059a1-94e4-4aa7-87b5-ab155c2bf072": "x509",
    "826ca512-cf10-4ac9-b187-be01496631bd": "sha1",
    "3c5766e8-269c-4e34-aa14-ed776e85b3b6": "rsa2048",
    "3bd2a492-96c0-4079-b420-fcf98ef103ed": "x509_sha256",
    "7076876e-80c2-4ee6-aad2-28b349a6865b": "x509_sha384",
    "446dbf63-2502-4cda-bcfa-2465d2b0fe9d": "x509_sha512",
    "ff3e5307-9fd0-48c9-85f1-8ad56c701e01": "sha384",
    "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a": "sha512",
}


@functools.lru_cache(maxsize=1024)  # a few GUIDs (vendors, signature types) fill every log
def guid(raw: bytes) -> str:
    """A 16-byte little-endian EFI_GUID as its canonical lower-case text."""
    if len(raw) != 16:
        return str(uuid.UUID(bytes_le=raw))  # raises ValueError, as it always did
    return (f"{raw[3::-1].hex()}-{raw[5:3:-1].hex()}-{raw[7:5:-1].hex()}-"
            f"{raw[8:10].hex()}-{raw[10:].hex()}")


def safe_text(text: str) -> str:
    """``text`` with control and non-printable characters escaped, at most MAX_TEXT chars."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "…"
    if text.isprintable():
        return text
    # grub's menu entries hold hundreds of newlines and tabs in kilobytes of text: those are
    # replaced in C; binary data read as text (an EV_NONHOST_INFO blob) is mostly control
    # characters, escaped by one table in C; the regex then hands only what is left (non-
    # printable characters beyond U+00FF) to Python. Printable characters are never escaped.
    text = text.replace("\n", "\\x0a").replace("\t", "\\x09").replace("\r", "\\x0d")
    if text.isprintable():
        return text
    text = text.translate(_LATIN1_ESCAPES)
    if text.isprintable():
        return text
    return _NOT_PRINTABLE_ASCII.sub(_escape, text)


_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")
_LATIN1_ESCAPES = {c: f"\\x{c:02x}" for c in range(256) if not chr(c).isprintable()}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c.isprintable():
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"


def utf16(raw: bytes) -> str:
    """A UTF-16LE string, cut at the first NUL."""
    text = raw[: len(raw) & ~1].decode("utf-16-le", "replace")
    return safe_text(text.split("\x00", 1)[0])


def text_of(raw: bytes) -> str:
    """Event data that is a string: UTF-16LE when it looks so, else UTF-8; trailing NULs dropped."""
    if len(raw) >= 4 and len(raw) % 2 == 0 and raw[1] == 0 and raw[3] == 0:
        return utf16(raw)
    return safe_text(raw.rstrip(b"\x00").decode("utf-8", "replace"))


# -- UEFI_VARIABLE_DATA -------------------------------------------------------------------------
_VARIABLE_HEAD = struct.Struct("<16sQQ")


@dataclass(frozen=True)
class Variable:
    vendor: str  # GUID text
    name: str
    data: bytes


def variable(raw: bytes, strict: bool = True) -> Variable:
    """UEFI_VARIABLE_DATA: GUID, name length (chars), data length, UTF-16 name, data.

    ``strict=False`` tolerates trailing bytes (shim logs authority events a few bytes long).
    """
    if len(raw) >= _VARIABLE_HEAD.size:  # whole and valid: one unpack (else the precise error)
        vendor, name_chars, data_len = _VARIABLE_HEAD.unpack_from(raw)
        name_end = _VARIABLE_HEAD.size + 2 * name_chars
        data_end = name_end + data_len
        if name_chars <= MAX_NAME_CHARS and (
                data_end == len(raw) or (not strict and data_end <= len(raw))):
            return Variable(guid(vendor), utf16(raw[_VARIABLE_HEAD.size : name_end]),
                            raw[name_end:data_end])
    r = LeReader(raw, "UEFI_VARIABLE_DATA")
    vendor = guid(r.take(16))
    name_chars, data_len = r.u64(), r.u64()
    if name_chars > MAX_NAME_CHARS:
        raise r.fail(f"name of {name_chars} chars")
    name = utf16(r.take(2 * name_chars))
    data = r.take(data_len)
    if strict:
        r.end()
    return Variable(vendor, name, data)


def signature_lists(raw: bytes) -> list[tuple[str, list[str]]]:
    """EFI_SIGNATURE_LIST of db/dbx/KEK/PK: per list, its type and its entry ids (the hex of a
    hash entry, the SHA-256 of a certificate)."""
    r = LeReader(raw, "EFI_SIGNATURE_LIST")
    out: list[tuple[str, list[str]]] = []
    total = 0
    while r.remaining:
        start = r.pos
        sig_type = _SIG_TYPES.get(guid(r.take(16)), "other")
        list_size, header_size, sig_size = r.u32(), r.u32(), r.u32()
        body = list_size - (r.pos - start) - header_size
        if sig_size < 16 or body < 0 or body + header_size > r.remaining:
            raise r.fail(f"signature list sizes {list_size}/{header_size}/{sig_size}")
        if body % sig_size:
            raise r.fail("signature list not a whole number of entries")
        r.skip(header_size)
        entries = r.take(body)
        total += body // sig_size
        if total > MAX_SIGNATURES:
            raise r.fail("too many signatures")
        # Each entry: owner GUID, then the data; one unpack cuts every entry's data out. Hash
        # entries (most of dbx) are shown as themselves, certificates by their SHA-256.
        datas = struct.unpack(f"16x{sig_size - 16}s" * (body // sig_size), entries)
        if sig_size - 16 <= 64:
            ids = list(map(bytes.hex, datas))
        else:
            sha256 = hashlib.sha256
            ids = [sha256(d).hexdigest() for d in datas]
        out.append((sig_type, ids))
    return out


# -- device paths -------------------------------------------------------------------------------
def device_path(raw: bytes) -> list[str]:
    """Readable nodes of an EFI_DEVICE_PATH: file paths as text, other nodes as ``type/sub``."""
    nodes: list[str] = []
    pos, end = 0, len(raw)
    while pos < end:  # fast path: whole nodes only; anything else is read again below
        if end - pos < 4 or len(nodes) >= MAX_PATH_NODES:
            break
        kind, sub, length = _NODE_HEAD.unpack_from(raw, pos)
        if length < 4 or length > end - pos:
            break
        body = raw[pos + 4 : pos + length]
        pos += length
        if kind == 0x7F:  # end of this instance (0xFF) or of the whole path
            if sub == 0xFF:
                return nodes
            continue
        nodes.append(_node_text(kind, sub, body))
    else:
        return nodes
    return _device_path_checked(raw)


def _device_path_checked(raw: bytes) -> list[str]:
    """``device_path`` field by field, with the precise error for a malformed path."""
    r = LeReader(raw, "device path")
    nodes: list[str] = []
    while r.remaining:
        if len(nodes) >= MAX_PATH_NODES:
            raise r.fail("too many device path nodes")
        kind, sub, length = r.u8(), r.u8(), r.u16()
        if length < 4:
            raise r.fail(f"device path node of {length} B")
        body = r.take(length - 4)
        if kind == 0x7F:  # end of this instance (0xFF) or of the whole path
            if sub == 0xFF:
                break
            continue
        nodes.append(_node_text(kind, sub, body))
    return nodes


_NODE_HEAD = struct.Struct("<BBH")


def _node_text(kind: int, sub: int, body: bytes) -> str:
    if kind == 4 and sub == 4:
        return "file:" + utf16(body)
    if kind == 4 and sub == 1 and len(body) >= 38:
        return f"partition:{int.from_bytes(body[:4], 'little')}:{guid(body[20:36])}"
    if kind == 4 and sub == 6 and len(body) == 16:
        return "fv_file:" + guid(body)
    if kind == 4 and sub == 7 and len(body) == 16:
        return "fv:" + guid(body)
    return f"node:{kind}/{sub}"


def file_path_hint(nodes: list[str]) -> str:
    """The file path named by a device path (its file nodes joined), or ``""``."""
    parts = [n[5:].strip("\\") for n in nodes if n.startswith("file:")]
    parts = [p for p in parts if p]
    return "\\" + "\\".join(parts) if parts else ""


@dataclass(frozen=True)
class ImageLoad:
    location: int
    length: int
    path_nodes: list[str]


def image_load(raw: bytes) -> ImageLoad:
    """UEFI_IMAGE_LOAD_EVENT (64-bit UINTN): location, length, link address, device path.

    Bytes after the device path are ignored (shim and grub append padding).
    """
    r = LeReader(raw, "UEFI_IMAGE_LOAD_EVENT")
    location, length, _link, path_len = r.u64(), r.u64(), r.u64(), r.u64()
    path = r.take(path_len)
    return ImageLoad(location, length, device_path(path))


def load_option(raw: bytes) -> tuple[str, list[str]]:
    """EFI_LOAD_OPTION (Boot####): its description and device path nodes."""
    r = LeReader(raw, "EFI_LOAD_OPTION")
    r.u32()  # attributes
    path_len = r.u16()
    end = 6
    while True:  # the description: UTF-16, NUL-terminated, on a 2-byte boundary
        end = raw.find(b"\x00\x00", end)
        if end < 0 or end - 6 > 2 * MAX_NAME_CHARS:
            raise r.fail("description not terminated")
        if end % 2 == 0:
            break
        end += 1
    description = utf16(r.take(end - 6))
    r.take(2)
    return description, device_path(r.take(path_len))


# -- GPT ------------------------------------------------------------------------------------------
def gpt(raw: bytes) -> tuple[str, list[dict[str, str]]]:
    """UEFI_GPT_DATA: the disk GUID and each partition's type, GUID and name."""
    r = LeReader(raw, "UEFI_GPT_DATA")
    header = r.take(92)
    if header[:8] != b"EFI PART":
        raise r.fail("no GPT signature")
    header_size = int.from_bytes(header[12:16], "little")
    if header_size < 92:
        raise r.fail(f"GPT header of {header_size} B")
    r.take(header_size - 92)
    disk = guid(header[56:72])
    entry_size = int.from_bytes(header[84:88], "little")
    count = r.u64()
    if count > MAX_PARTITIONS or entry_size < 128:
        raise r.fail(f"{count} partitions of {entry_size} B")
    parts = []
    for _ in range(count):
        entry = r.take(entry_size)
        parts.append({"type": guid(entry[:16]), "guid": guid(entry[16:32]),
                      "name": utf16(entry[56:128])})
    r.end()
    return disk, parts
