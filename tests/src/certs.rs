//! Test certificates made with the `openssl` CLI: a CA and the server and client
//! certificates it signs, as files in a test's own directory.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA that signs the test's certificates.
pub struct TestCa {
    dir: PathBuf,
    serial: u32,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// Both files' contents: (certificate PEM, key PEM).
    pub fn pem(&self) -> io::Result<(String, String)> {
        Ok((
            std::fs::read_to_string(&self.cert)?,
            std::fs::read_to_string(&self.key)?,
        ))
    }
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(args: &[String]) -> io::Result<()> {
    let made = Command::new("openssl").args(args).output()?;
    if made.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        )))
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl TestCa {
    /// A new CA named `name` in `dir` (made if missing): `dir/ca.pem` and `dir/ca-key.pem`.
    pub fn new(dir: &Path, name: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut args: Vec<String> = ["req", "-x509", "-days", "1", "-subj"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(format!("/CN={name}"));
        args.extend(EC_KEY.map(str::to_owned));
        args.extend(
            [
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
            ]
            .map(str::to_owned),
        );
        args.push(path_arg(&dir.join("ca-key.pem")));
        args.push("-out".to_owned());
        args.push(path_arg(&dir.join("ca.pem")));
        openssl(&args)?;
        Ok(Self {
            dir: dir.to_owned(),
            serial: 1,
        })
    }

    /// The CA's certificate file.
    #[must_use]
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate named `name` (its files are `<name>.pem` and `<name>-key.pem`) with the
    /// DNS or URI subject alternative names `sans` (`spiffe://...` is a URI, anything else a
    /// DNS name), for `usage`.
    pub fn issue(&mut self, name: &str, sans: &[&str], usage: Usage) -> io::Result<Issued> {
        self.serial += 1;
        let file = |suffix: &str| self.dir.join(format!("{name}{suffix}"));
        let alt: Vec<String> = sans
            .iter()
            .map(|san| {
                if san.contains("://") {
                    format!("URI:{san}")
                } else {
                    format!("DNS:{san}")
                }
            })
            .collect();
        let eku = match usage {
            Usage::Server => "serverAuth",
            Usage::Client => "clientAuth",
        };
        std::fs::write(
            file(".ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\n\
                 extendedKeyUsage={eku}\nkeyUsage=critical,digitalSignature\n",
                alt.join(",")
            ),
        )?;
        let cn = sans.first().copied().unwrap_or(name);
        let mut request: Vec<String> = vec!["req".into(), "-new".into()];
        request.extend(EC_KEY.map(str::to_owned));
        request.extend([
            "-subj".into(),
            format!("/CN={cn}"),
            "-keyout".into(),
            path_arg(&file("-key.pem")),
            "-out".into(),
            path_arg(&file(".csr")),
        ]);
        openssl(&request)?;
        let sign: Vec<String> = vec![
            "x509".into(),
            "-req".into(),
            "-days".into(),
            "1".into(),
            "-set_serial".into(),
            self.serial.to_string(),
            "-in".into(),
            path_arg(&file(".csr")),
            "-CA".into(),
            path_arg(&self.cert()),
            "-CAkey".into(),
            path_arg(&self.dir.join("ca-key.pem")),
            "-extfile".into(),
            path_arg(&file(".ext")),
            "-out".into(),
            path_arg(&file(".pem")),
        ];
        openssl(&sign)?;
        Ok(Issued {
            cert: file(".pem"),
            key: file("-key.pem"),
        })
    }
}
