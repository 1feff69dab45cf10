use super::*;

use crate::test_util::TempDir;

fn s(v: &str) -> StarValue {
    StarValue::Str(v.to_string())
}

/// An optics table and a micrographs table, RELION style.
fn sample() -> Vec<StarTable> {
    vec![
        StarTable {
            block: "optics".into(),
            columns: vec![
                "rlnOpticsGroupName".into(),
                "rlnOpticsGroup".into(),
                "rlnMicrographPixelSize".into(),
                "rlnVoltage".into(),
            ],
            rows: vec![vec![
                s("opticsGroup1"),
                StarValue::Int(1),
                StarValue::Num(0.834),
                StarValue::Num(300.0),
            ]],
        },
        StarTable {
            block: "micrographs".into(),
            columns: vec![
                "rlnMicrographName".into(),
                "rlnOpticsGroup".into(),
                "rlnDefocusU".into(),
                "rlnCtfMaxResolution".into(),
            ],
            rows: (0..5)
                .map(|i| {
                    vec![
                        s(&format!("average/movie_{i:03}.mrc")),
                        StarValue::Int(1),
                        StarValue::Num(15000.25 + 1000.0 * f64::from(i)),
                        StarValue::Num(-3.5 + f64::from(i) * 0.125),
                    ]
                })
                .collect(),
        },
    ]
}

#[test]
fn tables_roundtrip() {
    let tmp = TempDir::new("star-roundtrip");
    let path = tmp.join("micrographs.star");
    let tables = sample();
    write_star(&path, &tables).unwrap();
    assert_eq!(read_star(&path).unwrap(), tables);
    assert_eq!(tmp.entries(), vec!["micrographs.star".to_string()]);
}

#[test]
fn written_text_is_relion_style() {
    let tmp = TempDir::new("star-text");
    let path = tmp.join("a.star");
    let table = StarTable {
        block: "micrographs".into(),
        columns: vec!["rlnMicrographName".into(), "rlnDefocusU".into()],
        rows: vec![
            vec![s("average/a.mrc"), StarValue::Num(15012.5)],
            vec![s("average/b c.mrc"), StarValue::Int(14877)],
        ],
    };
    write_star(&path, &[table]).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\n\
         average/a.mrc 15012.5\n\"average/b c.mrc\" 14877\n\n"
    );
}

#[test]
fn numbers_are_written_with_six_decimals_at_most() {
    let cases = [
        (2.0, "2.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (0.834, "0.834"),
        (15012.5, "15012.5"),
        (1.0 / 3.0, "0.333333"),
        (-2.0 / 3.0, "-0.666667"),
        (0.001, "0.001"),
        (1.5e-7, "1.5e-7"),
        (-2.25e-4, "-2.25e-4"),
        (1e20, "1.0e20"),
        (123456.0, "123456.0"),
        (f64::NAN, "nan"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ];
    for (x, want) in cases {
        assert_eq!(format_num(x), want, "{x}");
        // And each reads back as a number close to the original.
        match parse_bare(want) {
            StarValue::Num(y) if x.is_nan() => assert!(y.is_nan()),
            StarValue::Num(y) if x.is_infinite() => assert_eq!(y, x),
            StarValue::Num(y) => assert!((y - x).abs() <= 5e-7 * x.abs().max(1.0), "{x} {y}"),
            other => panic!("{want} read back as {other:?}"),
        }
    }
}

#[test]
fn bare_values_are_typed_by_their_text() {
    let cases = [
        ("12", StarValue::Int(12)),
        ("-7", StarValue::Int(-7)),
        ("+3", StarValue::Int(3)),
        ("1.5", StarValue::Num(1.5)),
        ("1.", StarValue::Num(1.0)),
        (".5", StarValue::Num(0.5)),
        ("1e3", StarValue::Num(1000.0)),
        ("-2.5E-2", StarValue::Num(-0.025)),
        ("99999999999999999999", StarValue::Num(1e20)),
        ("Inf", StarValue::Num(f64::INFINITY)),
        ("-inf", StarValue::Num(f64::NEG_INFINITY)),
        ("-", s("-")),
        (".", s(".")),
        ("e5", s("e5")),
        ("1.2.3", s("1.2.3")),
        ("0x10", s("0x10")),
        ("1_000", s("1_000")),
        ("infinite", s("infinite")),
        ("a.mrc", s("a.mrc")),
    ];
    for (text, want) in cases {
        assert_eq!(parse_bare(text), want, "{text}");
    }
    assert!(matches!(parse_bare("NaN"), StarValue::Num(x) if x.is_nan()));
}

#[test]
fn strings_are_quoted_when_they_would_not_read_back() {
    let quoted = [
        "",
        "a b",
        "tab\there",
        "#comment",
        "_rlnFake",
        "'single",
        "data_x",
        "LOOP_",
        "123",
        "-1.5",
        "1e5",
        "nan",
        "inf",
        // Only a token's first '#' starts a comment in STAR, but pandas-based readers cut at any.
        "x#y",
    ];
    let bare = [
        "a.mrc",
        "dir/with-dash_and_underscore.tif",
        "it's",
        "12a",
        "mydata_",
    ];
    for v in quoted {
        assert!(needs_quotes(v), "{v:?} should be quoted");
    }
    for v in bare {
        assert!(!needs_quotes(v), "{v:?} should be bare");
    }

    let tmp = TempDir::new("star-quoting");
    let path = tmp.join("q.star");
    let table = StarTable {
        block: "strings".into(),
        columns: vec!["rlnImageName".into(), "rlnOther".into()],
        rows: quoted
            .iter()
            .chain(bare.iter())
            .map(|v| vec![s(v), StarValue::Int(1)])
            .collect(),
    };
    write_star(&path, std::slice::from_ref(&table)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n\"\" 1\n"), "{text}");
    assert!(text.contains("\n\"a b\" 1\n"), "{text}");
    assert!(text.contains("\n\"123\" 1\n"), "{text}");
    assert!(text.contains("\nit's 1\n"), "{text}");
    assert_eq!(read_star(&path).unwrap(), vec![table]);
}

#[test]
fn string_with_double_quote_or_line_break_is_an_error() {
    let tmp = TempDir::new("star-badstr");
    let path = tmp.join("b.star");
    for bad in ["say \"hi\"", "two\nlines", "cr\r"] {
        let table = StarTable {
            block: "t".into(),
            columns: vec!["rlnA".into(), "rlnB".into()],
            rows: vec![
                vec![StarValue::Int(1), s("ok")],
                vec![StarValue::Int(2), s(bad)],
            ],
        };
        let e = write_star(&path, &[table]).unwrap_err();
        assert!(matches!(e, StarError::InvalidTable { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("b.star") && msg.contains("data_t"), "{msg}");
        assert!(msg.contains("row 2, column rlnB"), "{msg}");
    }
    assert!(tmp.entries().is_empty());
}

#[test]
fn wrong_row_length_is_an_error_and_writes_nothing() {
    let tmp = TempDir::new("star-rowlen");
    let path = tmp.join("r.star");
    let mut tables = sample();
    tables[1].rows[3].pop();
    let e = write_star(&path, &tables).unwrap_err();
    assert!(matches!(e, StarError::InvalidTable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("data_micrographs: row 4 has 3 values for 4 columns"),
        "{e}"
    );
    assert!(tmp.entries().is_empty());

    // An existing file is left as it was.
    std::fs::write(&path, "old").unwrap();
    assert!(write_star(&path, &tables).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
}

#[test]
fn bad_names_are_errors() {
    let tmp = TempDir::new("star-names");
    let path = tmp.join("n.star");
    let table = |block: &str, columns: &[&str]| StarTable {
        block: block.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: vec![],
    };
    let cases = [
        (table("t", &["rlnA", ""]), "column 2 has an empty name"),
        (table("t", &["rln A"]), "contains whitespace"),
        (table("t", &["_rlnA"]), "starts with '_'"),
        (table("t", &["rlnA", "rlnA"]), "appears twice"),
        (table("t", &[]), "no columns"),
        (table("my block", &["rlnA"]), "block name"),
    ];
    for (t, want) in cases {
        let e = write_star(&path, &[t]).unwrap_err();
        assert!(matches!(e, StarError::InvalidTable { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    }
    assert!(tmp.entries().is_empty());
}

#[test]
fn empty_table_and_empty_block_name_roundtrip() {
    let tmp = TempDir::new("star-empty");
    let path = tmp.join("e.star");
    let tables = vec![
        StarTable {
            block: "".into(),
            columns: vec!["rlnA".into()],
            rows: vec![vec![StarValue::Num(1.5)]],
        },
        StarTable {
            block: "nothing_yet".into(),
            columns: vec!["rlnA".into(), "rlnB".into()],
            rows: vec![],
        },
    ];
    write_star(&path, &tables).unwrap();
    assert_eq!(read_star(&path).unwrap(), tables);
    write_star(&path, &[]).unwrap();
    assert_eq!(read_star(&path).unwrap(), vec![]);
}

#[test]
fn reads_relion_written_text() {
    // RELION pads columns and ends keyword lines with a space; comments and CRLF may appear.
    let text = "\n# version 30001\n\ndata_optics\n\nloop_ \n_rlnOpticsGroupName #1 \n\
                _rlnOpticsGroup #2 \nopticsGroup1            1 \n\n\n# version 30001\n\n\
                data_micrographs\r\n\r\nloop_ \r\n_rlnMicrographName #1 \r\n\
                _rlnDefocusU #2 # a comment\r\n\
                MotionCorr/job002/a.mrc  15000.000000 \r\n\
                'MotionCorr/job002/b c.mrc'  1.4e+04 # trailing\r\n";
    assert_eq!(
        parse(text).unwrap(),
        vec![
            StarTable {
                block: "optics".into(),
                columns: vec!["rlnOpticsGroupName".into(), "rlnOpticsGroup".into()],
                rows: vec![vec![s("opticsGroup1"), StarValue::Int(1)]],
            },
            StarTable {
                block: "micrographs".into(),
                columns: vec!["rlnMicrographName".into(), "rlnDefocusU".into()],
                rows: vec![
                    vec![s("MotionCorr/job002/a.mrc"), StarValue::Num(15000.0)],
                    vec![s("MotionCorr/job002/b c.mrc"), StarValue::Num(14000.0)],
                ],
            },
        ]
    );
}

#[test]
fn unreadable_text_gives_the_line() {
    let cases = [
        (
            "data_a\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3\n",
            6,
            "row has 1 values for 2 columns",
        ),
        ("data_a\n_rlnA 1\n", 2, "key-value pair _rlnA"),
        ("data_a\n\ndata_b\nloop_\n_rlnA\n1\n", 1, "without a loop_"),
        ("data_a\nloop_\n", 1, "without a loop_"),
        ("data_a\nloop_\n_rlnA\n1\nloop_\n_rlnB\n", 5, "second loop_"),
        ("data_a\nloop_\n_rlnA\n1\n_rlnB\n", 5, "after the rows"),
        ("loop_\n", 1, "before the first data_"),
        ("data_a\nloop_\n_rlnA\n\"open\n", 4, "unterminated"),
        ("data_a\nloop_\n_rlnA\n\"x\"y\n", 4, "after a closing quote"),
        ("data_a\nloop_\n1\n", 3, "unexpected"),
        ("data_a\nloop_\n_rlnA\n_rlnA\n", 4, "appears twice"),
    ];
    for (text, line, want) in cases {
        let (l, reason) = parse(text).unwrap_err();
        assert_eq!(l, line, "{text:?}: {reason}");
        assert!(
            reason.contains(want),
            "{text:?}: {reason} (wanted {want:?})"
        );
    }

    let tmp = TempDir::new("star-parse");
    let path = tmp.join("p.star");
    std::fs::write(&path, cases[0].0).unwrap();
    let e = read_star(&path).unwrap_err();
    assert!(matches!(e, StarError::Parse { line: 6, .. }), "{e}");
    assert!(e.to_string().contains("p.star:6:"), "{e}");
    let e = read_star(tmp.join("missing.star")).unwrap_err();
    assert!(matches!(e, StarError::Io { .. }) && e.to_string().contains("missing.star"));
}

#[test]
fn value_helpers() {
    let t = &sample()[1];
    assert_eq!(t.column_index("rlnDefocusU"), Some(2));
    assert_eq!(t.column_index("rlnNope"), None);
    assert_eq!(t.rows[0][2].as_f64(), Some(15000.25));
    assert_eq!(t.rows[0][1].as_f64(), Some(1.0));
    assert_eq!(t.rows[0][0].as_str(), Some("average/movie_000.mrc"));
    assert_eq!(t.rows[0][0].as_f64(), None);
    assert_eq!(StarValue::from("x"), s("x"));
    assert_eq!(StarValue::from(2.5), StarValue::Num(2.5));
    assert_eq!(StarValue::from(3i64), StarValue::Int(3));
}

/// Reads what we write with the `starfile` Python package (teamtomo), the reader many cryo-EM
/// scripts use. Skipped, with a message, where python3 or starfile is missing.
#[test]
fn python_starfile_reads_what_we_write() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import starfile"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("skipped: python3 with the starfile package is not available");
            return;
        }
    }
    let tmp = TempDir::new("star-python");
    let path = tmp.join("p.star");
    let mut tables = sample();
    tables[1].rows[2][0] = s("average/with space.mrc");
    write_star(&path, &tables).unwrap();
    let script = r#"
import sys, starfile
d = starfile.read(sys.argv[1], always_dict=True)
assert list(d) == ['optics', 'micrographs'], list(d)
o, m = d['optics'], d['micrographs']
assert list(o.columns) == ['rlnOpticsGroupName', 'rlnOpticsGroup', 'rlnMicrographPixelSize', 'rlnVoltage'], list(o.columns)
assert o['rlnOpticsGroupName'][0] == 'opticsGroup1'
assert int(o['rlnOpticsGroup'][0]) == 1
assert abs(float(o['rlnMicrographPixelSize'][0]) - 0.834) < 1e-9
assert list(m.columns) == ['rlnMicrographName', 'rlnOpticsGroup', 'rlnDefocusU', 'rlnCtfMaxResolution'], list(m.columns)
assert len(m) == 5, len(m)
names = list(m['rlnMicrographName'])
assert names[2] == 'average/with space.mrc', names
assert names[0] == 'average/movie_000.mrc', names
for i in range(5):
    assert abs(float(m['rlnDefocusU'][i]) - (15000.25 + 1000 * i)) < 1e-6
    assert abs(float(m['rlnCtfMaxResolution'][i]) - (-3.5 + 0.125 * i)) < 1e-9
print('ok')
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "starfile could not read:\n{}\n--- file ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&path).unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
