from typing_extensions import Buffer

def moments(
    x: Buffer,
    mean: Buffer,
    m2: Buffer,
    K: int,
    R: int,
    C: int,
    stride_k: int,
    stride_r: int,
    stride_c: int,
    kind: str,
    /,
) -> None: ...
