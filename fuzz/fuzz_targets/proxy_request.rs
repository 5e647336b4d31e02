//! What a client sends the edge proxy's HTTP/1.1 fast path, from arbitrary bytes: request heads
//! parsed one after another (pipelined), each body skipped by its length, as `fast` reads a
//! client connection. Every head the fast path forwards must reach the backend with the framing
//! the proxy used (the same body length, no transfer coding: no request smuggling), without
//! hop-by-hop headers, and with exactly one `X-Forwarded-For` and `X-Forwarded-Proto`; and the
//! forwarded head is forwarded again the same way by a second proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout::proxy::h1::{self, Request};

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let mut again = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let buf = &data[at..];
        let head = match h1::parse_request(buf, "127.0.0.1", &mut out) {
            Request::Partial | Request::HandOff => return,
            Request::Forward(head) => head,
        };
        assert!(head.head_len > 0 && head.head_len <= buf.len());
        assert!(head.body_len <= h1::MAX_BUFFERED_BODY);

        // What the backend reads.
        let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS + 2];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "the backend cannot read the forwarded head ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(
            n,
            out.len(),
            "the forwarded head ends where the body starts"
        );
        assert_eq!(req.version, Some(1));
        let mut lengths = Vec::new();
        let (mut xff, mut xfp) = (0, 0);
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            assert!(
                !HOP_BY_HOP.contains(&name.as_str()),
                "hop-by-hop `{}` forwarded",
                h.name
            );
            match name.as_str() {
                "content-length" => lengths.push(h.value.to_vec()),
                "x-forwarded-for" => xff += 1,
                "x-forwarded-proto" => xfp += 1,
                _ => {}
            }
        }
        assert_eq!(
            (xff, xfp),
            (1, 1),
            "one X-Forwarded-For and one X-Forwarded-Proto"
        );
        // The backend must delimit the body exactly as the proxy did.
        let backend_len = match lengths.as_slice() {
            [] => 0,
            [v] => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("a forwarded Content-Length is a number"),
            more => panic!("{} Content-Length headers forwarded", more.len()),
        };
        assert_eq!(
            backend_len, head.body_len,
            "the backend would frame the body differently"
        );

        // The forwarded head is itself one the fast path forwards, with the same framing (a
        // proxy in front of another). Two headers are added, so a head that came with nearly
        // MAX_HEADERS may leave with more: the next proxy hands that one to hyper.
        match h1::parse_request(&out, "10.0.0.1", &mut again) {
            Request::Forward(h) => {
                assert_eq!(h.head_len, out.len());
                assert_eq!(
                    (h.body_len, h.head_method, h.replayable),
                    (head.body_len, head.head_method, head.replayable)
                );
            }
            Request::HandOff if req.headers.len() > h1::MAX_HEADERS => {}
            other => panic!("the forwarded head is not forwarded again: {other:?}"),
        }

        let next = head.head_len as u64 + head.body_len;
        if next > buf.len() as u64 || head.close {
            return;
        }
        at += next as usize;
    }
});
