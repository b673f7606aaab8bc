//! `fetch URL [OUT [CA_PEM]]`: stream URL to OUT (default or `-`: stdout) through
//! HttpSource with the default policy, trusting CA_PEM instead of the built-in
//! roots when given; a manual check of the crate (static build, TLS, memory).

use std::io::{self, Write};

use abkit_fetch::{Opener, RetryPolicy, TrustRoots};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: fetch URL [OUT|- [CA_PEM]]");
        std::process::exit(2);
    };
    let result = (|| -> io::Result<u64> {
        let out_path = args.next().filter(|p| p != "-");
        let mut opener = Opener::new(&RetryPolicy::default());
        if let Some(ca) = args.next() {
            opener = opener.trust(TrustRoots::Pem(std::fs::read(ca)?));
        }
        let mut source = opener.open(&url).map_err(io::Error::other)?;
        let mut out: Box<dyn Write> = match out_path {
            Some(path) => Box::new(std::fs::File::create(path)?),
            None => Box::new(io::stdout().lock()),
        };
        let copied = io::copy(&mut source, &mut out)?;
        out.flush()?;
        eprintln!("{copied} bytes in {} attempt(s)", source.attempts());
        Ok(copied)
    })();
    if let Err(error) = result {
        eprintln!("fetch: error: {error}");
        std::process::exit(1);
    }
}
