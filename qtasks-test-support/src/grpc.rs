//! gRPC test helpers: a server of an app on a free port, certificates made in the test, a TLS
//! channel, a request with a token.

use qtasks::QueueTasks;

/// Serves `app`'s gRPC API on a free port until the sender is dropped or sent to; returns the
/// address.
pub async fn serve_grpc(
    app: &QueueTasks,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    tokio::spawn(async move {
        qtasks::grpc::serve_listener(served, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (address, stop)
}

/// Serves a gRPC server of `app` (with a token, TLS, or neither) on a free port of loopback
/// until the sender is dropped or sent to; returns the address.
pub async fn serve_grpc_with(
    grpc: qtasks::grpc::Grpc,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        grpc.serve_listener(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (address, stop)
}

/// PEM made in the test: a certificate authority, and a server certificate for `localhost`
/// signed by it with its private key.
pub struct TestCertificates {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A new certificate authority and a `localhost` server certificate signed by it.
pub fn test_certificates() -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "qtasks test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    TestCertificates {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A gRPC channel over TLS to `127.0.0.1:port`, trusting `ca` and expecting a certificate for
/// `localhost`.
pub async fn grpc_tls_channel(
    port: u16,
    ca: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )?
        .connect()
        .await
}

/// `message` as a gRPC request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}
