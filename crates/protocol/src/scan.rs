//! A one-pass reader for the usual shape of a v2 JSON inference request: an optional `id` and
//! `inputs`, each with exactly `name`, `shape`, `datatype` and a flat array of numbers as
//! `data`, in any key order, with any JSON whitespace.
//!
//! It only finds where things are: the names, the shape and the text of each `data` array.
//! Anything outside that shape (parameters, requested outputs, escapes in a string, nested or
//! non-numeric data, a duplicate or unknown key, anything that is not valid JSON) makes it
//! answer `None`, and the general serde decoder reads the body instead and names any problem.
//! So what it accepts is a subset of what the general decoder accepts, read the same way (a
//! property test holds the two decoders equal). Why it exists: serde's derived decoder, which
//! checks every number of `data` once as a raw value before the typed decoder parses it
//! again, was a third of the decode's cost (profiled, batch-1 churn).

/// One input as it appears in the body.
pub(crate) struct ScannedInput<'a> {
    pub name: &'a str,
    pub shape: Vec<i64>,
    pub datatype: &'a str,
    /// The `data` array's text, brackets included: valid JSON, numbers only, not nested.
    pub data: &'a str,
}

pub(crate) struct Scanned<'a> {
    pub id: Option<&'a str>,
    pub inputs: Vec<ScannedInput<'a>>,
}

/// The request's parts, or `None` when the body is not of the usual shape.
pub(crate) fn scan(body: &[u8]) -> Option<Scanned<'_>> {
    let mut r = Reader { text: body, at: 0 };
    let mut id = None;
    let mut inputs = None;
    r.expect(b'{')?;
    loop {
        match r.string()? {
            "id" if id.is_none() => {
                r.expect(b':')?;
                id = Some(r.string()?);
            }
            "inputs" if inputs.is_none() => {
                r.expect(b':')?;
                inputs = Some(r.inputs()?);
            }
            _ => return None,
        }
        if !r.next_member()? {
            break;
        }
    }
    r.skip_whitespace();
    // Trailing characters are the general decoder's error to name.
    (r.at == body.len()).then_some(Scanned {
        id,
        inputs: inputs?,
    })
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// After an object member or array element: true at `,`, false at the closing `close`.
    fn next(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    fn next_member(&mut self) -> Option<bool> {
        self.next(b'}')
    }

    /// A string without escapes or control characters, as valid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.text.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let text = std::str::from_utf8(&self.text[start..self.at]).ok()?;
        self.at += 1;
        Some(text)
    }

    /// A JSON array, each element read by `element`; `None` as soon as one is not.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            element(self)?;
            if !self.next(b']')? {
                return Some(());
            }
        }
    }

    fn inputs(&mut self) -> Option<Vec<ScannedInput<'a>>> {
        let mut inputs = Vec::with_capacity(1);
        self.array(|r| {
            inputs.push(r.input()?);
            Some(())
        })?;
        Some(inputs)
    }

    fn input(&mut self) -> Option<ScannedInput<'a>> {
        let (mut name, mut shape, mut datatype, mut data) = (None, None, None, None);
        self.expect(b'{')?;
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            match key {
                "name" if name.is_none() => name = Some(self.string()?),
                "shape" if shape.is_none() => shape = Some(self.shape()?),
                "datatype" if datatype.is_none() => datatype = Some(self.string()?),
                "data" if data.is_none() => data = Some(self.numbers()?),
                _ => return None,
            }
            if !self.next_member()? {
                break;
            }
        }
        Some(ScannedInput {
            name: name?,
            shape: shape?,
            datatype: datatype?,
            data: data?,
        })
    }

    /// An array of non-negative integers in i64 (negative dimensions, `-0` among them, are the
    /// general decoder's to read and refuse).
    fn shape(&mut self) -> Option<Vec<i64>> {
        let mut dims = Vec::with_capacity(4);
        self.array(|r| {
            r.skip_whitespace();
            let start = r.at;
            r.number()?;
            let token = std::str::from_utf8(&r.text[start..r.at]).ok()?;
            if !token.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            dims.push(token.parse().ok()?);
            Some(())
        })?;
        Some(dims)
    }

    /// A flat array of JSON numbers; its text, brackets included.
    fn numbers(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        self.array(|r| {
            r.skip_whitespace();
            r.number()
        })?;
        // Only ASCII was accepted between the brackets.
        std::str::from_utf8(&self.text[start..self.at]).ok()
    }

    /// One number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.text.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match *self.text.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
        }
        if let Some(b'e' | b'E') = self.text.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.text.get(self.at) {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        // A number runs into the next token only through whitespace, `,` or `]`: `01` or
        // `1x` are not numbers.
        match self.text.get(self.at) {
            Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']') => Some(()),
            _ => None,
        }
    }

    fn digits(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::sample::select(options).prop_map(str::to_owned)
    }

    fn space() -> impl Strategy<Value = String> {
        pick(&["", "", " ", "\n", "\t ", " \r\n "])
    }

    /// Number tokens: JSON's (short and long, signed, fractions, exponents, beyond i64, u64
    /// and f64) and near misses it refuses.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<i64>().prop_map(|n| n.to_string()),
            3 => any::<f32>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| x.to_string()),
            3 => any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x:e}")),
            3 => (0u8..=255).prop_map(|n| n.to_string()),
            1 => pick(&[
                "0", "-0", "0.0", "-0.0", "1e3", "1E+3", "2.5e-3", "1e999", "-1e999",
                "18446744073709551615", "18446744073709551616", "9223372036854775808",
                "-9223372036854775809", "01", "1.", ".5", "+1", "-", "1e", "1e+", "--1",
                "true", "null", "\"1\"", "[1]", "NaN", "0x1",
            ]),
        ]
    }

    fn data() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((space(), number(), space()), 0..5),
            any::<bool>(),
        )
            .prop_map(|(values, trailing_comma)| {
                let items: Vec<String> = values
                    .into_iter()
                    .map(|(a, n, b)| format!("{a}{n}{b}"))
                    .collect();
                format!(
                    "[{}{}]",
                    items.join(","),
                    if trailing_comma { "," } else { "" }
                )
            })
    }

    fn shape() -> impl Strategy<Value = String> {
        prop::collection::vec(
            pick(&[
                "1",
                "2",
                "3",
                "4",
                "0",
                "-1",
                "-0",
                "1.0",
                "01",
                "1e1",
                "99999999999999999999",
            ]),
            0..3,
        )
        .prop_map(|dims| format!("[{}]", dims.join(",")))
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z]{1,5}".prop_map(|s| format!("\"{s}\"")),
            1 => pick(&["\"é\"", "\"a\\\"b\"", "\"\\u0041\"", "\"\"", "null", "7"]),
        ]
    }

    fn datatype() -> impl Strategy<Value = String> {
        pick(&[
            "\"FP32\"",
            "\"FP32\"",
            "\"FP64\"",
            "\"INT64\"",
            "\"INT32\"",
            "\"INT8\"",
            "\"UINT8\"",
            "\"UINT64\"",
            "\"BOOL\"",
            "\"BYTES\"",
            "\"FP16\"",
            "\"fp32\"",
        ])
    }

    /// An object from members, in the given order, with spacing around each token.
    fn object(members: Vec<(String, String)>, spaces: &[String]) -> String {
        let space = |i: usize| spaces[i % spaces.len()].as_str();
        let inner: Vec<String> = members
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| format!("{}\"{k}\"{}:{}{v}", space(i), space(i + 1), space(i + 2)))
            .collect();
        format!("{{{}{}}}", inner.join(","), space(3))
    }

    fn input() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            string().prop_map(|v| ("name".to_owned(), v)),
            shape().prop_map(|v| ("shape".to_owned(), v)),
            datatype().prop_map(|v| ("datatype".to_owned(), v)),
            data().prop_map(|v| ("data".to_owned(), v)),
            pick(&["{}", "{\"binary_data_size\":4}"]).prop_map(|v| ("parameters".to_owned(), v)),
            data().prop_map(|v| ("extra".to_owned(), v)),
        ];
        let usual = (string(), shape(), datatype(), data()).prop_map(|(n, s, t, d)| {
            vec![
                ("name".to_owned(), n),
                ("shape".to_owned(), s),
                ("datatype".to_owned(), t),
                ("data".to_owned(), d),
            ]
        });
        let members = prop_oneof![
            4 => usual.prop_shuffle(),
            1 => prop::collection::vec(member, 0..6),
        ];
        (members, prop::collection::vec(space(), 4)).prop_map(|(m, s)| object(m, &s))
    }

    fn body() -> impl Strategy<Value = String> {
        let inputs =
            || prop::collection::vec(input(), 0..3).prop_map(|i| format!("[{}]", i.join(",")));
        let member = prop_oneof![
            2 => inputs().prop_map(|v| ("inputs".to_owned(), v)),
            2 => string().prop_map(|v| ("id".to_owned(), v)),
            1 => pick(&["{}", "{\"k\":\"v\"}"]).prop_map(|v| ("parameters".to_owned(), v)),
            1 => pick(&["[]", "[{\"name\":\"label\"}]"]).prop_map(|v| ("outputs".to_owned(), v)),
        ];
        let usual = (inputs(), prop::option::of(string())).prop_map(|(inputs, id)| {
            let mut members = vec![("inputs".to_owned(), inputs)];
            members.extend(id.map(|id| ("id".to_owned(), id)));
            members
        });
        let members = prop_oneof![
            3 => usual.prop_shuffle(),
            1 => prop::collection::vec(member, 0..4),
        ];
        (
            members,
            prop::collection::vec(space(), 4),
            pick(&["", "", "", " ", " x", ","]),
        )
            .prop_map(|(m, s, trailing)| format!("{}{trailing}", object(m, &s)))
    }

    fn decoded(body: &str, scan: bool) -> String {
        let decoded =
            crate::binary::decode_request_with(body.as_bytes(), None, "m".into(), None, scan);
        format!("{decoded:?}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Whatever the body, the one-pass reader and the general decoder give the same
        /// request or the same refusal.
        #[test]
        fn the_one_pass_reader_decodes_as_the_general_decoder(body in body()) {
            prop_assert_eq!(decoded(&body, true), decoded(&body, false), "{}", body);
        }
    }

    /// Each input as (name, shape, datatype, data text).
    type Parts = (String, Vec<i64>, String, String);

    fn names(body: &str) -> Option<Vec<Parts>> {
        scan(body.as_bytes()).map(|s| {
            s.inputs
                .into_iter()
                .map(|i| (i.name.into(), i.shape, i.datatype.into(), i.data.into()))
                .collect()
        })
    }

    #[test]
    fn reads_the_usual_request_in_any_key_order() {
        let body = r#" { "inputs" : [ {"data":[1, -2.5e3 ,0],"datatype":"FP32","shape":[1,3],"name":"x"} ], "id":"r1" } "#;
        let scanned = scan(body.as_bytes()).unwrap();
        assert_eq!(scanned.id, Some("r1"));
        assert_eq!(
            names(body).unwrap(),
            vec![(
                "x".into(),
                vec![1, 3],
                "FP32".into(),
                "[1, -2.5e3 ,0]".into()
            )]
        );
        assert_eq!(
            names(r#"{"inputs":[{"name":"é","shape":[],"datatype":"INT64","data":[]}]}"#).unwrap()
                [0]
            .3,
            "[]"
        );
    }

    #[test]
    fn leaves_everything_else_to_the_general_decoder() {
        let input = |data: &str| {
            format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"FP32","data":{data}}}]}}"#)
        };
        for body in [
            input("[[1],[2]]"),
            input("[1,true]"),
            input(r#"["1",2]"#),
            input("[01,2]"),
            input("[1.,2]"),
            input("[.5,2]"),
            input("[+1,2]"),
            input("[1e,2]"),
            input("[1,2,]"),
            input("[1 2]"),
            input("[NaN,2]"),
            input("[1,2"),
            r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1.0],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x\n","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#
                .into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{}}]}"#
                .into(),
            r#"{"inputs":[],"outputs":[]}"#.into(),
            r#"{"inputs":[],"parameters":{}}"#.into(),
            r#"{"id":null,"inputs":[]}"#.into(),
            r#"{"inputs":[]} x"#.into(),
            r#"{"inputs":[],}"#.into(),
            r#"{"id":"a"}"#.into(),
            r#"[]"#.into(),
        ] {
            assert!(names(&body).is_none(), "{body}");
        }
    }
}
