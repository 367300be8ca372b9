//! The network routes: vSwitches, their uplinks, port groups, and the whole network's
//! state with every port's counters. Names in paths are checked like VM names (so `/`,
//! `..` and the like are refused with 400 before anything reaches the host).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};

use vmk_api::model::{validate_name, HostError};
use vmk_api::network::{
    check_ifname, PortGroupDef, PortGroupUpdate, UplinkSpec, VSwitchDef, VSwitchUpdate,
};

use super::http::{call, json, ApiErr, AppState, JsonBody};
use crate::host_api::NetworkApi;

/// The path's parameters by name, each checked: `vswitch` and `portgroup` as names,
/// `uplink` as an interface name.
pub(super) struct Names(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(map) =
            axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiErr::bad_request(format!("bad name in the path: {}", e.body_text()))
                })?;
        for (k, v) in &map {
            match k.as_str() {
                "vswitch" => validate_name("vSwitch", v)?,
                "portgroup" => validate_name("port group", v)?,
                "uplink" => check_ifname(v)?,
                _ => validate_name(k, v)?,
            }
        }
        Ok(Names(map))
    }
}

impl Names {
    fn get(&self, k: &str) -> String {
        // The routes define these parameters; a missing one is a routing bug.
        self.0.get(k).cloned().unwrap_or_default()
    }
}

fn no_network() -> HostError {
    HostError::Internal("this host has no network support".into())
}

/// Runs `f` on the host's network on the blocking pool.
async fn net<T, F>(s: &AppState, f: F) -> Result<T, ApiErr>
where
    T: Send + 'static,
    F: FnOnce(&dyn NetworkApi) -> Result<T, HostError> + Send + 'static,
{
    call(s, move |h| {
        let n = h.network().ok_or_else(no_network)?;
        f(n)
    })
    .await
}

pub(super) async fn info(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let v = net(&s, |n| Ok(n.info())).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn list_vswitches(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let v = net(&s, |n| Ok(n.vswitches())).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn add_vswitch(
    State(s): State<AppState>,
    JsonBody(def): JsonBody<VSwitchDef>,
) -> Result<Response, ApiErr> {
    validate_name("vSwitch", &def.name)?;
    let v = net(&s, move |n| n.add_vswitch(def)).await?;
    Ok(json(StatusCode::CREATED, &v))
}

pub(super) async fn vswitch(State(s): State<AppState>, p: Names) -> Result<Response, ApiErr> {
    let name = p.get("vswitch");
    let v = net(&s, move |n| n.vswitch(&name)).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn update_vswitch(
    State(s): State<AppState>,
    p: Names,
    JsonBody(u): JsonBody<VSwitchUpdate>,
) -> Result<Response, ApiErr> {
    let name = p.get("vswitch");
    let v = net(&s, move |n| n.update_vswitch(&name, u)).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn remove_vswitch(
    State(s): State<AppState>,
    p: Names,
) -> Result<Response, ApiErr> {
    let name = p.get("vswitch");
    net(&s, move |n| n.remove_vswitch(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn add_uplink(
    State(s): State<AppState>,
    p: Names,
    JsonBody(u): JsonBody<UplinkSpec>,
) -> Result<Response, ApiErr> {
    check_ifname(&u.name)?;
    let name = p.get("vswitch");
    let v = net(&s, move |n| n.add_uplink(&name, u)).await?;
    Ok(json(StatusCode::CREATED, &v))
}

pub(super) async fn remove_uplink(State(s): State<AppState>, p: Names) -> Result<Response, ApiErr> {
    let (sw, up) = (p.get("vswitch"), p.get("uplink"));
    let v = net(&s, move |n| n.remove_uplink(&sw, &up)).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn list_portgroups(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let v = net(&s, |n| Ok(n.portgroups())).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn add_portgroup(
    State(s): State<AppState>,
    JsonBody(def): JsonBody<PortGroupDef>,
) -> Result<Response, ApiErr> {
    validate_name("port group", &def.name)?;
    let v = net(&s, move |n| n.add_portgroup(def)).await?;
    Ok(json(StatusCode::CREATED, &v))
}

pub(super) async fn portgroup(State(s): State<AppState>, p: Names) -> Result<Response, ApiErr> {
    let name = p.get("portgroup");
    let v = net(&s, move |n| n.portgroup(&name)).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn update_portgroup(
    State(s): State<AppState>,
    p: Names,
    JsonBody(u): JsonBody<PortGroupUpdate>,
) -> Result<Response, ApiErr> {
    let name = p.get("portgroup");
    let v = net(&s, move |n| n.update_portgroup(&name, u)).await?;
    Ok(json(StatusCode::OK, &v))
}

pub(super) async fn remove_portgroup(
    State(s): State<AppState>,
    p: Names,
) -> Result<Response, ApiErr> {
    let name = p.get("portgroup");
    net(&s, move |n| n.remove_portgroup(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
