//! API types: what talm owns ([`cgu`], [`precaching`], [`spokeagent`]) and typed views of the
//! RHACM objects it reads and writes ([`rhacm`]), and the API server's checks of names and
//! label selectors ([`checks`]).
//!
//! Every type serialises in the camelCase JSON shape of the real API, so objects read from
//! `oc get -o yaml` round-trip. talm-owned specs reject unknown fields (a typo in a CGU is an
//! error, not a silent no-op); views of foreign objects ignore what they do not need.

pub mod cgu;
pub mod checks;
pub mod precachebudget;
pub mod precaching;
pub mod rhacm;
pub mod spokeagent;
pub mod work;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
};
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Defines the root object of a talm-owned kind when the `kube` feature is off. With the feature
/// on, kube's `CustomResource` derive generates the same struct (`metadata`, `spec`, `status`).
macro_rules! plain_root {
    ($(#[$doc:meta])* $root:ident, $spec:ty, $status:ty, $api_version:literal, $kind:literal) => {
        #[cfg(not(feature = "kube"))]
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $root {
            /// Standard object metadata.
            pub metadata: $crate::api::ObjectMeta,
            /// The desired state.
            pub spec: $spec,
            /// The observed state.
            pub status: Option<$status>,
        }

        #[cfg(not(feature = "kube"))]
        impl $root {
            /// Builds an object with the given name and spec and no status.
            pub fn new(name: &str, spec: $spec) -> Self {
                Self {
                    metadata: $crate::api::ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                }
            }
        }

        #[cfg(not(feature = "kube"))]
        impl serde::Serialize for $root {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut s = ser.serialize_struct(stringify!($root), 5)?;
                s.serialize_field("apiVersion", $api_version)?;
                s.serialize_field("kind", $kind)?;
                s.serialize_field("metadata", &self.metadata)?;
                s.serialize_field("spec", &self.spec)?;
                if let Some(status) = &self.status {
                    s.serialize_field("status", status)?;
                }
                s.end()
            }
        }

        #[cfg(not(feature = "kube"))]
        impl<'de> serde::Deserialize<'de> for $root {
            fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                struct Repr {
                    #[serde(default)]
                    metadata: $crate::api::ObjectMeta,
                    spec: $spec,
                    #[serde(default)]
                    status: Option<$status>,
                }
                let r = Repr::deserialize(de)?;
                Ok(Self { metadata: r.metadata, spec: r.spec, status: r.status })
            }
        }
    };
}
pub(crate) use plain_root;

/// Implements `kube_core::Resource` for a hand-written view of a foreign kind.
macro_rules! view_resource {
    ($root:ident, $group:literal, $version:literal, $kind:literal, $plural:literal, $scope:ident) => {
        #[cfg(feature = "kube")]
        impl kube_core::Resource for $root {
            type DynamicType = ();
            type Scope = k8s_openapi::$scope;
            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &$crate::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut $crate::api::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use view_resource;

/// Returns true when `v` is `None` or an empty collection (for `skip_serializing_if`).
pub(crate) fn is_none_or_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_none_or(|v| v.is_empty())
}
