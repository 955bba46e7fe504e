"""Every built-in type family into SQLite, value by value, after the copy and after
streamed INSERTs and UPDATEs (docs/destinations.md, type mapping).

The table has one column per type; rows hold NULLs, extremes, Unicode (4-byte UTF-8,
combining characters) and values over 1 MB (text, bytea, jsonb). compare_table checks
every value against the source's output form and the documented storage class
(integer, real, text, blob); a few exact forms are asserted on their own.
"""

import math

from pipeline import wait_equal
from workload import publish

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀', 'e\u0301t\u00e9');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN shorttext AS varchar(40);
CREATE TYPE pair AS (a int, b text, c float8[]);
CREATE TABLE alltypes (
    id      int PRIMARY KEY,
    i2      smallint,
    i4      integer,
    i8      bigint,
    o       oid,
    f4      real,
    f8      double precision,
    num     numeric,
    num2    numeric(12, 3),
    t       text,
    vc      varchar(10),
    ch      char(5),
    nm      name,
    c1      "char",
    by      bytea,
    b       boolean,
    u       uuid,
    js      json,
    jb      jsonb,
    d       date,
    tm      time,
    ttz     timetz,
    ts      timestamp,
    tstz    timestamptz,
    iv      interval,
    ip      inet,
    cid     cidr,
    mac     macaddr,
    mac8    macaddr8,
    mon     money,
    bt      bit(8),
    vb      varbit,
    r4      int4range,
    rts     tstzrange,
    rnum    numrange,
    rd      daterange,
    mr      int4multirange,
    a1      int[],
    a2      int[][],
    at      text[],
    af      float8[],
    en      mood,
    dom     posint,
    domt    shorttext,
    comp    pair,
    tsv     tsvector,
    tsq     tsquery,
    pt      point,
    x       xml,
    lsn     pg_lsn
)"""

ROWS = r"""
INSERT INTO alltypes (id) VALUES (1);  -- all NULL
INSERT INTO alltypes VALUES
(2, -32768, -2147483648, -9223372036854775808, 0,
    '-Infinity', '-Infinity', '-Infinity', -999999999.999,
    '', '', '', '', 'a', '', false,
    '00000000-0000-0000-0000-000000000000', '{}', '{}',
    '4713-01-01 BC', '00:00:00', '00:00:00-15:59', '4713-01-01 00:00:00 BC',
    '4713-01-01 00:00:00+00 BC', '-178000000 years', '0.0.0.0/0', '0.0.0.0/0',
    '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', '-92233720368547758.08',
    B'00000000', B'', 'empty', 'empty', 'empty', 'empty', '{}',
    '{}', '{}', '{}', '{}', 'sad', 1, '', ROW(NULL, NULL, NULL), '', 'a', '(0,0)',
    '<a/>', '0/0'),
(3, 32767, 2147483647, 9223372036854775807, 4294967295,
    'Infinity', 'Infinity', 'Infinity', 999999999.999,
    'max', 'abcdefghij', 'abcde', repeat('n', 63), 'z', '\xff', true,
    'ffffffff-ffff-ffff-ffff-ffffffffffff', '[1, 2.50, "x", null, true]',
    '{"b": [1, 2.50, {"c": null}], "a": "\u00e9"}',
    '5874897-12-31', '24:00:00', '24:00:00+15:59', '294276-12-31 23:59:59.999999',
    '294276-12-31 23:59:59.999999+00', '178000000 years', '::ffff:1.2.3.4/128',
    'ffff::/16', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff', '92233720368547758.07',
    B'11111111', B'1010101010101010101', '[-2147483648,2147483647)',
    '["2000-01-01 00:00:00+00","infinity")', '(,)', '[2000-01-01,infinity)',
    '{[1,5), [10,20)}', '{1,NULL,3}', '{{1,NULL},{NULL,4}}', '{"a,b","c\"d",NULL,"NULL",""}',
    '{NaN,Infinity,-Infinity,-0,1.5}', 'happy 😀', 2147483647, 'forty characters of text xxxxxxxxxxxxxxx',
    ROW(7, 'x "y" z', '{1.5,NaN}'), 'a fat:1A cat:2B sat', 'fat & (rat | !cat)', '(-1.5,1e+300)',
    '<doc a="1">t&amp;x</doc>', 'FFFFFFFF/FFFFFFFF'),
(4, 0, 0, 0, 1,
    'NaN', 'NaN', 'NaN', 0,
    E'tab\there\nnewline\\back\\slash \\N \u0001', 'é✓', 'é', 'é', 'é', '\x00015c0a', true,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '"s"', '"s"',
    'infinity', '12:34:56.789012', '12:34:56.789012+05:30', 'infinity',
    'infinity', '1 year 2 mons 3 days 04:05:06.789', '192.168.1.5/24', '192.168.0.0/16',
    '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '0.01',
    B'10100101', B'1', '[1,2)', '[2024-01-01 10:00:00+02,2024-01-02 00:00:00+00]', '(1.5,2.25]',
    '[2024-01-01,2024-02-01)', '{[1,2)}', '{{{1}}}', '[0:1][1:2]={{1,2},{3,4}}',
    ARRAY['😀', 'e' || chr(769), '\', '{x}', 'NULL'], '{{1.5,NULL},{NULL,-0}}', 'ok', 42,
    'e' || chr(769) || 'té 𝄞',
    ROW(-1, '', '{}'), '''x y'' ''z\\w''', '''a'':*', '(1,2)', 'text only', '16/B374D848'),
(5, -1, -1, -1, 2,
    '-0', '-0', '-0', 0.000000000000000000000000000001,
    'Unicode: 😀 𝄞 𠜎 e' || chr(769) || ' a' || chr(776) || chr(769) || ' ‮rtl‬ ‍zwj 中文 עברית',
    '😀😀😀😀😀😀😀😀😀😀', '😀e' || chr(769) || 'x', '𝄞𝄞', 'q', '\x', false,
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12', '{"k": "😀", "n": 1e400}', '{"k": "😀", "n": 1e40}',
    '2000-02-29', '23:59:59.999999', '23:59:59.999999+00', '2000-02-29 12:00:00.000001',
    '2000-02-29 12:00:00.000001-07', '-1 days -00:00:00.000001', '2001:db8::1',
    '2001:db8::/32', '01:02:03:04:05:06', '01:02:03:04:05:06:07:08', '-1.50',
    B'00000001', B'0', '[-1,1]', '(,"2000-01-01 00:00:00+00")', '[-1e-20,1e20]', '(,2000-01-01]',
    '{(,0), [5,)}', '{NULL}', '{{NULL,NULL},{NULL,NULL}}', '{}', '{-0,5e-324,1.7976931348623157e308}',
    ('e' || chr(769) || 't' || chr(233))::mood, 1, NULL, ROW(NULL, 'only b', NULL), '😀', '😀', '(NaN,-0)', NULL, '0/1'),
(6, 1, 1, 1, 3,
    0.1, 0.1, '123456789012345678901234567890.123456789012345678901234567890', 1.5,
    'plain', 'v', 'c', 'n', 'c', '\xdeadbeef', true,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', '  {"ws" :  1 }  ', '  {"ws" :  1 }  ',
    '0044-03-15 BC', '01:00', '01:00+01', '0044-03-15 12:00:00 BC',
    '0044-03-15 12:00:00+00 BC', '1 mon', '10.0.0.1', '10.0.0.0/8', '0a:0b:0c:0d:0e:0f',
    '0a:0b:0c:0d:0e:0f:10:11', '1234567.89',
    B'01010101', B'0101', '[3,7)', '[2024-06-30 12:34:56.123456-07,)', '[0,0]', 'empty', '{}',
    '{1}', '{{1},{2}}', '{a}', '{3.4028234663852886e+38,1.401298464324817e-45}',
    'happy 😀', 7, 'x', ROW(1, 'a', '{1,2}'), 'a:1 b:2', 'a', '(1e-300,5)', '<x>1</x>', '1/0');
INSERT INTO alltypes (id, i2, i4, i8, o, f4, f8, num, num2) VALUES
(7, 7, 7, 7, 7, 3.4028235e+38, 1.7976931348623157e308, '-0.000000000000000000001', -0.001),
(8, 8, 8, 8, 8, 1.401298464324817e-45, 5e-324, '1e-1000', 0.001);
-- values over 1 MB: text, bytea, jsonb (stored out of line)
INSERT INTO alltypes (id, i4, t, by, jb, at) VALUES (9, 1,
    (SELECT string_agg(md5(x::text) || '😀é', '') FROM generate_series(1, 30000) x),
    (SELECT decode(string_agg(md5(x::text), ''), 'hex') FROM generate_series(1, 70000) x),
    (SELECT jsonb_object_agg('k' || x, md5(x::text)) FROM generate_series(1, 25000) x),
    (SELECT array_agg(md5(x::text)) FROM generate_series(1, 32000) x));
-- every byte value in a bytea
UPDATE alltypes SET by = (SELECT decode(string_agg(lpad(to_hex(x), 2, '0'), ''), 'hex')
                          FROM generate_series(0, 255) x) WHERE id = 6;
"""

COLS = None  # filled from the catalog by _columns()


def _columns(db):
    return [r[0] for r in db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'alltypes'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]


def _dest_row(p, id_, cols):
    with p.dest() as d:
        q = ", ".join('typeof("%s"), "%s"' % (c, c) for c in cols)
        r = d.execute('SELECT %s FROM alltypes WHERE id = ?' % q, [id_]).fetchone()
    return {c: (r[2 * i], r[2 * i + 1]) for i, c in enumerate(cols)}


def _check_storage(p, cols):
    """The documented storage class of every column, and a few exact forms."""
    row3 = _dest_row(p, 3, cols)
    want_class = {"id": "integer", "i2": "integer", "i4": "integer", "i8": "integer",
                  "o": "integer", "b": "integer", "by": "blob"}
    for c in cols:
        got = row3[c][0]
        if c in want_class:
            assert got == want_class[c], (c, row3[c])
        elif c in ("f4", "f8"):
            assert got == "text" and row3[c][1] == "Infinity", (c, row3[c])
        else:
            assert got == "text", (c, row3[c])
    assert row3["i8"][1] == 9223372036854775807 and row3["o"][1] == 4294967295
    assert row3["b"][1] == 1 and row3["by"][1] == b"\xff"
    assert row3["num"][1] == "Infinity"
    assert row3["a2"][1] == "{{1,NULL},{NULL,4}}"
    assert row3["at"][1] == '{"a,b","c\\"d",NULL,"NULL",""}'
    assert row3["jb"][1] == '{"a": "\u00e9", "b": [1, 2.50, {"c": null}]}'
    assert row3["mon"][1] == "$92,233,720,368,547,758.07"
    assert row3["vb"][1] == "1010101010101010101"
    assert row3["ip"][1] == "::ffff:1.2.3.4"
    assert row3["tm"][1] == "24:00:00"
    assert row3["ts"][1] == "294276-12-31 23:59:59.999999"
    row2 = _dest_row(p, 2, cols)
    assert row2["i8"][1] == -9223372036854775808
    assert row2["d"][1] == "4713-01-01 BC"
    assert row2["tstz"][1] == "4713-01-01 00:00:00+00 BC"
    assert row2["iv"][1] == "-178000000 years"
    assert row2["f8"] == ("text", "-Infinity")
    row4 = _dest_row(p, 4, cols)
    assert row4["f4"] == ("text", "NaN") and row4["num"] == ("text", "NaN")
    assert row4["ts"][1] == "infinity" and row4["tstz"][1] == "infinity"
    assert row4["iv"][1] == "1 year 2 mons 3 days 04:05:06.789"
    assert row4["ttz"][1] == "12:34:56.789012+05:30"
    assert row4["t"][1] == "tab\there\nnewline\\back\\slash \\N \x01"
    assert row4["dom"] == ("text", "42")  # a domain is stored as its text form
    row5 = _dest_row(p, 5, cols)
    # -0 reads back as 0.0 (SQLite keeps integral REALs as integers on disk)
    assert row5["f8"] == ("real", 0.0) and row5["f4"] == ("real", 0.0)
    assert row5["num"] == ("text", "0") and row5["num2"] == ("text", "0.000")  # no numeric -0
    assert row5["vc"][1] == "😀" * 10 and "e\u0301" in row5["t"][1] and "𠜎" in row5["t"][1]
    assert row5["ch"][1] == "😀e\u0301x "  # char(5): five characters, padding kept
    row6 = _dest_row(p, 6, cols)
    assert row6["f4"] == ("real", 0.1)  # float4 0.1: the double nearest to "0.1"
    assert row6["num"][1] == "123456789012345678901234567890.123456789012345678901234567890"
    assert row6["by"][1] == bytes(range(256))
    assert row6["d"][1] == "0044-03-15 BC"
    row8 = _dest_row(p, 8, cols)
    assert row8["f8"] == ("real", 5e-324) and row8["num"][1].startswith("0.000")
    row9 = _dest_row(p, 9, ["t", "by", "jb", "at"])
    assert all(len(row9[c][1]) > 1_000_000 for c in row9), {c: len(v[1]) for c, v in row9.items()}


def test_all_types_copy_and_stream(db, pipelines):
    db.execute(TYPES_DDL)
    db.execute(ROWS)
    cols = _columns(db)
    assert len(cols) == 50
    publish(db, "pub", ["alltypes"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.alltypes"])
    assert p.tables()["public.alltypes"]["rows_copied"] == 9
    # 1. after the copy
    wait_equal(db.server, db.name, p, ["public.alltypes"])
    _check_storage(p, cols)

    # 2. the same rows again as streamed INSERTs (ids + 100)
    collist = ", ".join('"%s"' % c for c in cols[1:])
    db.execute("INSERT INTO alltypes (id, %s) SELECT id + 100, %s FROM alltypes" % (collist, collist))
    wait_equal(db.server, db.name, p, ["public.alltypes"])

    # 3. streamed UPDATEs: every column of row i takes row i+1's values (NULLs, extremes
    #    and the big values move around); then only an int changes in the row with the
    #    big values (they arrive as unchanged TOAST and must stay)
    db.execute("""
        BEGIN;
        CREATE TEMP TABLE snap ON COMMIT DROP AS SELECT * FROM alltypes;
        UPDATE alltypes a SET (%s) = (SELECT %s FROM snap s
            WHERE s.id = CASE WHEN a.id %% 100 = 9 THEN a.id - 8 ELSE a.id + 1 END)
        WHERE a.id < 100;
        COMMIT;
        UPDATE alltypes SET i4 = i4 + 1 WHERE id = 109;
        UPDATE alltypes SET t = t || 'x', i2 = 2 WHERE id = 109;
        UPDATE alltypes SET id = 1000 WHERE id = 109;
    """ % (collist, collist))
    assert db.scalar("SELECT length(t) FROM alltypes WHERE id = 8") > 1_000_000
    wait_equal(db.server, db.name, p, ["public.alltypes"])
    with p.dest() as d:
        r = d.execute("SELECT length(t), length(by), length(jb), i4 FROM alltypes WHERE id = 1000"
                      ).fetchone()
    assert r[0] > 1_000_000 and r[1] > 1_000_000 and r[2] > 1_000_000 and r[3] == 2, r

    # 4. float values survive the round trip bit for bit (except -0, documented)
    src = {r[0]: r[1] for r in db.execute("SELECT id, f8 FROM alltypes WHERE f8 IS NOT NULL "
                                          "AND f8 NOT IN ('NaN', 'Infinity', '-Infinity')")}
    with p.dest() as d:
        dst = {r[0]: r[1] for r in d.execute("SELECT id, f8 FROM alltypes")}
    for k, v in src.items():
        assert dst[k] == v and (v != 0 or dst[k] == 0.0), (k, v, dst[k])
        assert math.copysign(1, dst[k]) == math.copysign(1, v) or v == 0, (k, v, dst[k])
