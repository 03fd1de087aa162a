"""The payload codec, now :mod:`hwl.proto.codec`; this name stays for existing imports."""

from hwl.proto.codec import MAX_DEPTH, MAX_NAME, CodecError, Value, decode, encode

__all__ = ["MAX_DEPTH", "MAX_NAME", "CodecError", "Value", "decode", "encode"]
