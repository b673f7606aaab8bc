//! The OCI image manifest that carries a bundle, and abkit's media types
//! (docs/oci.md): an artifact manifest (image-spec "Guidelines for Artifact
//! Usage") whose `artifactType` says "abkit bundle", whose config is the
//! empty descriptor, and whose one layer is the bundle file as it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The manifest media type (OCI image manifest v1).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The `artifactType` of a bundle's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.abkit.bundle.v1";
/// The media type of the layer holding the bundle file (`.abb`, unchanged).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.abkit.bundle.layer.v1.abb";
/// The empty config (`{}`), as the image spec recommends for artifacts.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The content of the empty config.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Manifests larger than this are refused (the spec asks registries to
/// accept at least 4 MB; ours are a few hundred bytes).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Annotation: the file name (what `oras pull` names the file).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Annotation: the bundle's version.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
/// Annotation: the bundle's product (its `compatible`).
pub const COMPATIBLE_ANNOTATION: &str = "io.abkit.bundle.compatible";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The empty config descriptor, with its content inline (`e30=` is
    /// base64 of `{}`).
    pub fn empty_config() -> Descriptor {
        Descriptor {
            media_type: EMPTY_MEDIA_TYPE.into(),
            digest: Digest::of(EMPTY_CONFIG),
            size: EMPTY_CONFIG.len() as u64,
            data: Some("e30=".into()),
            annotations: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest (only the fields abkit uses; others are ignored
/// on reading).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest of a bundle stored as the blob `bundle`.
    pub fn for_bundle(bundle: Descriptor, annotations: BTreeMap<String, String>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor::empty_config(),
            layers: vec![bundle],
            annotations,
        }
    }

    /// The exact bytes pushed (and hashed for the digest).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// The bundle's layer, if this is an abkit bundle artifact; otherwise
    /// why not.
    pub fn bundle_layer(&self) -> Result<&Descriptor, String> {
        if self.schema_version != 2 {
            return Err(format!("schemaVersion is {}, not 2", self.schema_version));
        }
        if let Some(media_type) = &self.media_type
            && media_type != MANIFEST_MEDIA_TYPE
        {
            return Err(format!(
                "its mediaType is {media_type}, not an image manifest"
            ));
        }
        match self.artifact_type.as_deref() {
            Some(ARTIFACT_TYPE) => {}
            Some(other) => return Err(format!("its artifactType is {other}, not {ARTIFACT_TYPE}")),
            None if self.config.media_type == ARTIFACT_TYPE => {}
            None => {
                return Err(format!(
                    "it has no artifactType (config is {}): a container image?",
                    self.config.media_type
                ));
            }
        }
        let mut bundles = self
            .layers
            .iter()
            .filter(|layer| layer.media_type == BUNDLE_MEDIA_TYPE);
        match (bundles.next(), bundles.next()) {
            (Some(layer), None) => Ok(layer),
            (None, _) => Err(format!("no layer of type {BUNDLE_MEDIA_TYPE}")),
            (Some(_), Some(_)) => Err(format!("more than one layer of type {BUNDLE_MEDIA_TYPE}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_layer() -> Descriptor {
        Descriptor {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            digest: Digest::of(b"bundle"),
            size: 6,
            data: None,
            annotations: BTreeMap::from([(TITLE_ANNOTATION.into(), "os-1.0.abb".into())]),
        }
    }

    #[test]
    fn a_bundle_manifest_round_trips_and_names_its_layer() {
        let m = Manifest::for_bundle(
            bundle_layer(),
            BTreeMap::from([(VERSION_ANNOTATION.into(), "1.0.0".into())]),
        );
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.abkit.bundle.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="}"#), "{text}");
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.bundle_layer().unwrap(), &bundle_layer());
    }

    #[test]
    fn other_artifacts_and_images_are_not_bundles() {
        let mut m = Manifest::for_bundle(bundle_layer(), BTreeMap::new());
        m.artifact_type = Some("application/vnd.cncf.helm.config.v1+json".into());
        assert!(m.bundle_layer().unwrap_err().contains("helm"));
        m.artifact_type = None;
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        assert!(m.bundle_layer().unwrap_err().contains("container image"));
        let mut m = Manifest::for_bundle(bundle_layer(), BTreeMap::new());
        m.layers.push(bundle_layer());
        assert!(m.bundle_layer().unwrap_err().contains("more than one"));
        m.layers.clear();
        assert!(m.bundle_layer().unwrap_err().contains("no layer"));
        let mut m = Manifest::for_bundle(bundle_layer(), BTreeMap::new());
        m.media_type = Some("application/vnd.oci.image.index.v1+json".into());
        assert!(m.bundle_layer().unwrap_err().contains("index"));
    }
}
