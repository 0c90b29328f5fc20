"""Online = offline for on-demand features: the numpy evaluator compiled from
an expression returns exactly what DuckDB returns for TRY(<expr>) — values
(NaN equal to NaN, -0.0 distinct from 0.0), null masks and output type — for
random expressions over random columns with NULLs, zeros, NaN/inf and
integers at the edges of their range."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsapp.ondemand.compiler import Unsupported, compile_expression, duckdb_evaluate

INPUTS = {"amount": "DOUBLE", "n": "BIGINT", "country": "VARCHAR", "flag": "BOOLEAN",
          "user_txn.avg": "DOUBLE", "user_txn.cnt": "BIGINT"}
I64 = 2**63 - 1
DOUBLES = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 0.5, 3.0, 1e-3, 1e308, -1e308, 710.0,
           float("nan"), float("inf"), float("-inf"), 2147483647.5, 9.3e18]
INTS = [0, 1, -1, 2, -2, 7, -7, 10, 15, -15, 2**31 - 1, -2**31, I64, -I64 - 1, 3037000500]
STRINGS = ["", "US", "us", "fr", "a", "ß", "İx", "e\u0301", "Zz"]

# ---------------------------------------------------------------- expressions

NUM_LEAVES = st.sampled_from(["amount", "n", "user_txn.avg", "user_txn.cnt", "0", "1", "-1", "2", "7",
                              "2147483647", "9223372036854775807", "2.5::DOUBLE", "0.0::DOUBLE",
                              "'nan'::DOUBLE", "'inf'::DOUBLE", "1e308", "NULL::BIGINT", "NULL::DOUBLE"])
BOOL_LEAVES = st.sampled_from(["flag", "true", "false", "NULL::BOOLEAN"])
STR_LEAVES = st.sampled_from(["country", "'US'", "'x'", "''", "NULL::VARCHAR"])


def expressions():
    def extend(children):
        # `children` draws (number, boolean, text) triples of smaller trees
        num, boolean, text = (children.map(lambda t, i=i: t[i]) for i in range(3))
        num_x = st.one_of(
            st.builds("({} {} {})".format, num, st.sampled_from(["+", "-", "*", "/", "//", "%"]), num),
            st.builds("(-{})".format, num),
            st.builds("{}({})".format, st.sampled_from(["abs", "sqrt", "ln", "log10", "exp", "floor", "ceil",
                                                          "round", "sign"]), num),
            st.builds("pow({}, {})".format, num, num),
            st.builds("round({}, {})".format, num, st.sampled_from(["0", "1", "2", "-1", "-2"])),
            st.builds("{}({}, {})".format, st.sampled_from(["least", "greatest", "coalesce", "nullif"]), num, num),
            st.builds("CAST({} AS {})".format, num, st.sampled_from(["BIGINT", "INTEGER", "DOUBLE"])),
            st.builds("CASE WHEN {} THEN {} ELSE {} END".format, boolean, num, num),
            st.builds("CASE WHEN {} THEN {} END".format, boolean, num),
            st.builds("length({})".format, text),
        )
        bool_x = st.one_of(
            st.builds("({} {} {})".format, num, st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), num),
            st.builds("({} {} {})".format, text, st.sampled_from(["=", "!=", "<", ">="]), text),
            st.builds("({} {} {})".format, boolean, st.sampled_from(["AND", "OR"]), boolean),
            st.builds("(NOT {})".format, boolean),
            st.builds("({} {})".format, st.one_of(num, text, boolean), st.sampled_from(["IS NULL", "IS NOT NULL"])),
            st.builds("CAST({} AS BOOLEAN)".format, num),
        )
        text_x = st.one_of(
            st.builds("({} || {})".format, text, text),
            st.builds("concat({}, {})".format, text, st.one_of(text, num)),
            st.builds("{}({})".format, st.sampled_from(["lower", "upper"]), text),
            st.builds("CAST({} AS VARCHAR)".format, st.one_of(boolean, st.sampled_from(["n", "user_txn.cnt"]))),
            st.builds("CASE {} WHEN {} THEN {} ELSE {} END".format, text, STR_LEAVES, text, text),
        )
        return st.tuples(num_x | num, bool_x | boolean, text_x | text)

    tree = st.recursive(st.tuples(NUM_LEAVES, BOOL_LEAVES, STR_LEAVES), extend, max_leaves=6)
    return st.builds(lambda t, i: t[i], tree, st.integers(0, 2))


@st.composite
def batches(draw):
    rows = draw(st.integers(1, 12))

    def column(values, dtype):
        vals = draw(st.lists(st.sampled_from(values), min_size=rows, max_size=rows))
        null = np.array(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
        return np.array(vals, dtype=dtype), null

    return {"amount": column(DOUBLES, np.float64), "user_txn.avg": column(DOUBLES, np.float64),
            "n": column(INTS, np.int64), "user_txn.cnt": column(INTS, np.int64),
            "flag": column([True, False], bool), "country": column(STRINGS, object)}


# ---------------------------------------------------------------- comparison


def assert_same(got, want, output_type):
    (gv, gn), (wv, wn) = got, want
    assert gn.dtype == bool and np.array_equal(gn, wn), f"null masks differ: {gn} vs {wn}"
    assert gv.dtype == wv.dtype and len(gv) == len(wv)
    keep = ~gn
    g, w = gv[keep], wv[keep]
    if output_type in ("DOUBLE", "FLOAT"):
        assert np.array_equal(np.isnan(g), np.isnan(w)), f"{g} vs {w}"
        real = ~np.isnan(g)
        assert np.array_equal(g[real], w[real]) and np.array_equal(np.signbit(g[real]), np.signbit(w[real])), \
            f"{g} vs {w}"
    else:
        assert list(g) == list(w), f"{g} vs {w}"


def check(sql, cols, inputs=INPUTS):
    compiled = compile_expression(sql, inputs)
    got, want = compiled(cols), duckdb_evaluate(sql, inputs, cols)
    assert_same(got, want, compiled.output_type)
    return compiled, got


@settings(max_examples=150)
@given(expressions(), batches())
def test_compiled_expression_equals_duckdb(sql, cols):
    try:
        compiled = compile_expression(sql, INPUTS)
    except Unsupported:
        return  # outside the subset: DuckDB evaluates it online too
    except ValueError:
        with pytest.raises(Exception):  # DuckDB rejects the expression itself
            duckdb_evaluate(sql, INPUTS, cols)
        return
    assert_same(compiled(cols), duckdb_evaluate(sql, INPUTS, cols), compiled.output_type)


# ---------------------------------------------------------------- worked examples


def cols_of(**columns):
    """name=(values, nulls) with None meaning NULL."""
    out = {}
    for name, values in columns.items():
        name = name.replace("__", ".")
        null = np.array([v is None for v in values])
        kind = INPUTS[name]
        fill = {"DOUBLE": 0.0, "BIGINT": 0, "BOOLEAN": False, "VARCHAR": ""}[kind]
        dtype = {"DOUBLE": np.float64, "BIGINT": np.int64, "BOOLEAN": bool, "VARCHAR": object}[kind]
        out[name] = (np.array([fill if v is None else v for v in values], dtype=dtype), null)
    return out


def values(result):
    v, null = result
    return [None if m else x for x, m in zip(v.tolist(), null)]


def test_division_by_zero_is_inf_or_nan_for_doubles():
    _, got = check("amount / user_txn.avg", cols_of(amount=[1.0, 0.0, -1.0], user_txn__avg=[0.0, 0.0, 0.0]))
    assert values(got)[0] == float("inf") and np.isnan(got[0][1]) and values(got)[2] == float("-inf")


def test_integer_division_and_modulo_by_zero_are_null():
    c = cols_of(n=[7, 7, -7], user_txn__cnt=[0, 2, 2])
    assert values(check("n // user_txn.cnt", c)[1]) == [None, 3, -3]  # truncates toward zero
    assert values(check("n % user_txn.cnt", c)[1]) == [None, 1, -1]
    # an error is not a NULL: COALESCE cannot rescue it, but a NULL operand never raises
    c = cols_of(n=[7, None], user_txn__cnt=[0, 0])
    assert values(check("coalesce(n // user_txn.cnt, -1)", c)[1]) == [None, -1]


def test_double_floor_division_is_plain_division_that_raises_on_zero():
    assert values(check("amount // user_txn.avg", cols_of(amount=[-7.0, 1.0], user_txn__avg=[2.0, 0.0]))[1]) \
        == [-3.5, None]


def test_casts_round_doubles_half_to_even_and_decimals_half_away():
    c = cols_of(amount=[2.5, -2.5, 3.5, 2147483647.5, float("nan")])
    assert values(check("CAST(amount AS BIGINT)", c)[1]) == [2, -2, 4, 2147483648, None]
    assert values(check("amount::INTEGER", c)[1]) == [2, -2, 4, None, None]
    assert values(check("CAST(2.5 AS BIGINT) + n * 0", cols_of(n=[1]))[1]) == [3]


def test_integer_overflow_is_null_and_rewrites_hide_it():
    c = cols_of(n=[I64, 1])
    assert values(check("n + 1", c)[1]) == [None, 2]
    # DuckDB's optimizer turns `n + 1 > 5` into `n > 4`: no overflow is raised.
    assert values(check("n + 1 > 5", c)[1]) == [True, False]


def test_null_in_and_or_is_three_valued():
    c = cols_of(flag=[True, False, None, None, None])
    assert values(check("flag AND NULL::BOOLEAN", c)[1]) == [None, False, None, None, None]
    assert values(check("flag OR true", c)[1]) == [True] * 5
    assert values(check("flag AND false", c)[1]) == [False] * 5


def test_case_with_null_condition_takes_else_and_short_circuits():
    c = cols_of(flag=[True, None, False], n=[1, 2, 3])
    assert values(check("CASE WHEN flag THEN n ELSE -n END", c)[1]) == [1, -2, -3]
    c = cols_of(user_txn__cnt=[0, 5], n=[10, 10])
    sql = "CASE WHEN user_txn.cnt <> 0 AND n // user_txn.cnt > 1 THEN 'big' ELSE 'small' END"
    assert values(check(sql, c)[1]) == ["small", "big"]
    # as a value AND evaluates both sides, so the zero divisor raises
    assert values(check("user_txn.cnt <> 0 AND n // user_txn.cnt > 1", c)[1]) == [None, True]


def test_nan_sorts_above_infinity_and_equals_itself():
    c = cols_of(amount=[float("nan"), float("nan")], user_txn__avg=[float("inf"), float("nan")])
    assert values(check("amount > user_txn.avg", c)[1]) == [True, False]
    assert values(check("amount = user_txn.avg", c)[1]) == [False, True]


def test_output_type_is_duckdbs():
    assert compile_expression("n / 2", INPUTS).output_type == "DOUBLE"
    assert compile_expression("sign(amount)", INPUTS).output_type == "TINYINT"
    assert compile_expression("country || n", INPUTS).output_type == "VARCHAR"
    assert compile_expression("amount / user_txn.avg", INPUTS).inputs == ("amount", "user_txn.avg")


def test_mixed_case_identifiers_resolve_like_duckdb():
    check("AMOUNT * User_Txn.AVG", cols_of(amount=[2.0], user_txn__avg=[3.0]))


@pytest.mark.parametrize("sql", ["(SELECT 1)", "regexp_matches(country, 'a')", "amount::VARCHAR",
                                 "n * 2.5", "CAST(country AS BIGINT)", "amount, n"])
def test_sql_outside_the_subset_is_unsupported(sql):
    with pytest.raises(Unsupported):
        compile_expression(sql, INPUTS)


@pytest.mark.parametrize("sql", ["amount / avg_amount", "user_txn.missing + 1", "other.avg"])
def test_unknown_column_is_a_value_error_naming_it(sql):
    with pytest.raises(ValueError, match="not an input"):
        compile_expression(sql, INPUTS)
    with pytest.raises(ValueError, match="not an input"):
        duckdb_evaluate(sql, INPUTS, cols_of(amount=[1.0]))


@pytest.mark.parametrize("sql", ["1) AS x FROM t, (SELECT 2", "amount FROM t", "amount +", "sum(amount)"])
def test_text_that_is_not_one_expression_is_rejected(sql):
    with pytest.raises(ValueError):
        compile_expression(sql, INPUTS)


def test_threads_plan_and_evaluate_at_once_each_in_their_own_connection():
    # one database per process, a cursor per plan or evaluation: the temp
    # table a plan creates and the table an evaluation registers (both named
    # __fs_in) are each call's own, whatever the other threads do meanwhile
    import threading

    errors = []

    def work(k):
        try:
            for i in range(15):
                inputs = {"amount": "DOUBLE", "n": "BIGINT"} if (k + i) % 2 else {"n": "BIGINT", "country": "VARCHAR"}
                sql = f"n * {k + 1} + {i}"
                compiled = compile_expression(sql, inputs)
                cols = {"n": (np.array([i, k], dtype=np.int64), np.array([False, True]))}
                got, want = compiled(cols), duckdb_evaluate(sql, inputs, cols)
                assert_same(got, want, compiled.output_type)
                assert got[0][0] == i * (k + 1) + i and got[1].tolist() == [False, True]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_forked_child_plans_in_a_database_of_its_own():
    # gunicorn forks its workers from a master that may have planned already:
    # the child opens a database of its own (the parent's threads are not in
    # the child) and plans and evaluates there
    import os

    compile_expression("n + 1", INPUTS)  # the parent's database exists
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            got = compile_expression("n * 3", INPUTS)(cols_of(n=[2]))
            values, null = duckdb_evaluate("n * 3", INPUTS, cols_of(n=[2]))
            code = 0 if got[0][0] == 6 and values[0] == 6 and not null[0] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
