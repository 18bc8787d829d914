//! Defines the domain from the rendered XML, unless it exists.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, spec: &DomainSpec) -> Result<StepOutcome, ActionError> {
    bridge_allowed(cx.s, &spec.bridge)?;
    let xml = cx
        .renderer
        .render(
            "domain.xml",
            minijinja::context! {
                spec => crate::render::val(spec),
                domain_type => cx.s.domain_type.clone(),
                machine => cx.s.machine.clone(),
                vnc_listen => cx.s.vnc_listen.clone(),
                // Made here and never sent anywhere: nobody knows it, so the
                // console opens only with a console ticket's password.
                vnc_password => crate::model::random_secret(8),
                tcg_cache_mib => 32,
                emulator => None::<String>,
            },
        )
        .map_err(|e| ActionError::failed("rendering the domain XML", e))?;
    if cx.hv.state(&spec.guest_id).await?.is_none() {
        cx.hv
            .define(&xml)
            .await
            .map_err(|e| ActionError::failed("defining the domain", e))?;
    }
    let live = cx.hv.xml(&spec.guest_id).await?;
    Ok(StepOutcome::Ok {
        guest_state: Some(DomState::Shutoff.as_str().into()),
        domain_xml: Some(live),
        output: None,
    })
}
