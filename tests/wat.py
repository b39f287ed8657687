"""WebAssembly text of the guest modules that the tests and the benchmarks share."""

# add(a, b) -> a + b (i32)
ADD = """
(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
"""

# spin(): a loop that never ends (only a trap stops it)
SPIN = """
(module
  (func (export "spin") (loop $l (br $l))))
"""

# n iterations of integer work, then returns n
COUNT = """
(module
  (func (export "count") (param $n i64) (result i64)
    (local $i i64)
    (block $done
      (loop $top
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $top)))
    (local.get $i)))
"""
