"""Kernel identity and differences (moecomm_tasks.kernel_checks), on literal names."""

from __future__ import annotations

from moecomm_tasks.kernel_checks import canonical, demangle, difference, kernel_set, summary

MANGLED = "_ZN2at6native29vectorized_elementwise_kernelILi4ENS0_11FillFunctorIiEEEEviT0_"
DEMANGLED = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int> >(int, at::native::FillFunctor<int>)"


def test_mangled_and_demangled_spellings_share_one_name():
    assert demangle(MANGLED) == DEMANGLED
    nvcc_style = DEMANGLED.replace("> >", ">>").replace(", ", ",")
    assert canonical(MANGLED) == canonical(DEMANGLED) == canonical(nvcc_style)
    assert canonical("unsigned  int f()") == "unsigned int f()"  # a space between words stays
    assert canonical("moePrepareKernel") == "moePrepareKernel" and demangle("_Znot a symbol") == "_Znot a symbol"
    assert canonical("f<int>(int)") != canonical("f<long>(long)")


def test_difference_names_what_was_added_removed_and_recounted():
    before = kernel_set([("dispatch", "a", 200), ("combine", MANGLED, 200), ("combine", "gone", 10)])
    after = kernel_set([("dispatch", "a", 400), ("combine", DEMANGLED, 200), ("other", "new", 1)])
    diff = difference(before, after)
    assert diff == {
        "added": [{"phase": "other", "kernel": "new", "printed": ["new"], "count": 1}],
        "removed": [{"phase": "combine", "kernel": "gone", "printed": ["gone"], "count": 10}],
        "count_changed": [{"phase": "dispatch", "kernel": "a", "printed_before": ["a"], "printed_after": ["a"],
                           "count_before": 200, "count_after": 400}],
    }
    assert summary(diff) == ["+ other new x1", "- combine gone x10", "~ dispatch a x200 -> x400"]
    assert difference(before, kernel_set([("dispatch", "a", 200), ("combine", DEMANGLED, 200),
                                          ("combine", "gone", 10)])) is None


def test_one_kernel_on_two_ranks_in_two_spellings_counts_once_at_its_largest_count():
    (launches,) = kernel_set([("combine", MANGLED, 200), ("combine", DEMANGLED, 198)]).values()
    assert (launches.kernel, launches.count, launches.printed) == (DEMANGLED, 200, tuple(sorted((MANGLED, DEMANGLED))))


def test_a_long_difference_is_cut_for_people():
    diff = {"added": [{"phase": "other", "kernel": f"k{i}", "printed": [f"k{i}"], "count": 1} for i in range(9)]}
    lines = summary(diff, limit=6)
    assert len(lines) == 7 and lines[-1].startswith("... and 3 more")
