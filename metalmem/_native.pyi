# Types for the cffi-generated module: cffi objects are dynamic, so they are Any.
from typing import Any

ffi: Any
lib: Any
