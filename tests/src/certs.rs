//! Certificates made for a test: a CA and the leaf certificates it signs
//! (rcgen), written where servers and agents read them.

use std::path::{Path, PathBuf};

/// A certificate and its key, in PEM.
pub type Pem = (String, String);

/// A certificate authority made for one test.
pub struct Ca {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    /// A self-signed CA with `name` as its CommonName.
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Ca { key, cert }
    }

    /// The CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate for `names` (DNS names, or IP addresses when they
    /// parse as one), with `common_name` as its CommonName or none.
    pub fn sign(&self, names: &[&str], common_name: Option<&str>) -> Pem {
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("leaf parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` at `dir/name`, mode 0600; returns the path.
pub fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}
