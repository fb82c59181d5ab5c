"""Type stubs of the Rust extension module (python/src/lib.rs). Use harvest.Lease instead."""

from typing import Any, Optional

class Session:
    def __init__(
        self,
        *,
        lib_path: Optional[str] = None,
        lib_bytes: Optional[bytes] = None,
        lib_on_node: Optional[str] = None,
        cores: int = 1,
        mem_mib: int = 0,
        gpus: int = 0,
        lifetime_s: Optional[float] = None,
        idle_timeout_s: Optional[float] = None,
        default_timeout_s: Optional[float] = None,
        scheduler: Optional[str] = None,
        failover: bool = True,
        failover_deadline_s: float = 30.0,
        connections: int = 0,
        pipeline_depth: int = 8,
        spin: bool = False,
    ) -> None: ...
    def invoke(self, function: str, data: bytes, timeout_s: Optional[float] = None) -> bytes: ...
    def invoke_many(
        self, function: str, inputs: list[bytes], timeout_s: Optional[float] = None
    ) -> list[Any]: ...
    def release(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def revocations(self) -> list[dict[str, str]]: ...
    @property
    def connections(self) -> int: ...

def exit_codes() -> dict[str, int]: ...
def parse_mem(text: str) -> int: ...
def parse_duration(text: str) -> float: ...
