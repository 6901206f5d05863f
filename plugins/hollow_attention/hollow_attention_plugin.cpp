// HollowAttention IPluginV3 implementation; see hollow_attention_plugin.h for the contract.
#include "hollow_attention_plugin.h"

#include "hollow_attention_kernel.h"

#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>

using namespace nvinfer1;

namespace rlens
{
namespace trt
{
namespace
{

constexpr int32_t kNB_INPUTS = 4;
constexpr int32_t kNB_OUTPUTS = 1;
constexpr int32_t kQ = 0;
constexpr int32_t kK = 1;
constexpr int32_t kV = 2;
constexpr int32_t kSPAN = 3;
constexpr int32_t kMAX_HEAD_DIM = RLENS_HOLLOW_MAX_HEAD_DIM;

// PluginField names and types, in rlens.plugins.spec.FIELD_NAMES order
// (tests/test_plugin_spec.py parses these two arrays and compares them with the spec).
constexpr char const* kFIELD_NAMES[] = {"window", "num_heads", "num_kv_heads", "head_dim", "scale"};
constexpr PluginFieldType kFIELD_TYPES[]
    = {PluginFieldType::kINT32, PluginFieldType::kINT32, PluginFieldType::kINT32, PluginFieldType::kINT32,
        PluginFieldType::kFLOAT32};
constexpr int32_t kNB_FIELDS = 5;

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

//! PluginFields of params (data pointing into *params), or just names/types when params is null.
std::vector<PluginField> makeFields(HollowAttentionParams* params)
{
    void const* data[kNB_FIELDS] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    if (params != nullptr)
    {
        data[0] = &params->window;
        data[1] = &params->num_heads;
        data[2] = &params->num_kv_heads;
        data[3] = &params->head_dim;
        data[4] = &params->scale;
    }
    std::vector<PluginField> fields;
    for (int32_t i = 0; i < kNB_FIELDS; ++i)
    {
        fields.emplace_back(kFIELD_NAMES[i], data[i], kFIELD_TYPES[i], 1);
    }
    return fields;
}

//! Numeric value of a field given as any int or float type (the ONNX parser may pass either).
bool readNumber(PluginField const& f, double& value) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(f.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: value = static_cast<double>(*static_cast<int64_t const*>(f.data)); return true;
    case PluginFieldType::kFLOAT32: value = *static_cast<float const*>(f.data); return true;
    case PluginFieldType::kFLOAT64: value = *static_cast<double const*>(f.data); return true;
    default: return false;
    }
}

//! Fill params from fc; unknown fields (e.g. plugin_version from the ONNX parser) are ignored.
bool parseFields(PluginFieldCollection const* fc, HollowAttentionParams& p) noexcept
{
    double values[kNB_FIELDS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    bool seen[kNB_FIELDS] = {false, false, false, false, false};
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        for (int32_t j = 0; f.name != nullptr && j < kNB_FIELDS; ++j)
        {
            if (std::strcmp(f.name, kFIELD_NAMES[j]) == 0)
            {
                seen[j] = readNumber(f, values[j]);
            }
        }
    }
    for (int32_t j = 0; j < kNB_FIELDS; ++j)
    {
        if (!seen[j])
        {
            logError("HollowAttention: missing or non-numeric plugin field");
            return false;
        }
    }
    p.window = static_cast<int32_t>(values[0]);
    p.num_heads = static_cast<int32_t>(values[1]);
    p.num_kv_heads = static_cast<int32_t>(values[2]);
    p.head_dim = static_cast<int32_t>(values[3]);
    p.scale = static_cast<float>(values[4]);
    return true;
}

bool validParams(HollowAttentionParams const& p) noexcept
{
    return p.window >= 1 && p.num_heads >= 1 && p.num_kv_heads >= 1 && p.num_heads % p.num_kv_heads == 0
        && p.head_dim >= 1 && p.head_dim <= kMAX_HEAD_DIM && std::isfinite(p.scale) && p.scale > 0.0F;
}

//! A dimension that is either still unknown (-1 at build time) or equal to expected.
bool dimIs(int64_t actual, int64_t expected) noexcept
{
    return actual < 0 || actual == expected;
}

bool fitsInt32(Dims const& d) noexcept
{
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        if (d.d[i] > INT32_MAX)
        {
            return false;
        }
    }
    return true;
}

} // namespace

void setLoggerFinderImpl(ILoggerFinder* finder) noexcept
{
    ILoggerFinder* expected = nullptr;
    gLoggerFinder.compare_exchange_strong(expected, finder);
}

void logError(char const* message) noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, message);
    }
}

// ---------------------------------------------------------------------------------------------
// HollowAttentionPlugin

HollowAttentionPlugin::HollowAttentionPlugin(HollowAttentionParams const& params)
    : mParams(params)
{
    mFields = makeFields(&mParams);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* HollowAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* HollowAttentionPlugin::clone() noexcept
{
    try
    {
        return new HollowAttentionPlugin(mParams);
    }
    catch (...)
    {
        return nullptr;
    }
}

char const* HollowAttentionPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* HollowAttentionPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* HollowAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t HollowAttentionPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t HollowAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kQ];
    return 0;
}

int32_t HollowAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || inputs[kQ].nbDims != 4)
    {
        logError("HollowAttention: expects q, k, v, visual_span with q of rank 4");
        return -1;
    }
    outputs[0] = inputs[kQ]; // out [B, Hq, S, D], the layout of q
    return 0;
}

bool HollowAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == kSPAN)
    {
        return desc.type == DataType::kINT64;
    }
    if (pos == kQ)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[kQ].desc.type; // k, v and out share the dtype of q
}

bool HollowAttentionPlugin::checkDims(Dims const* d, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || d[kQ].nbDims != 4 || d[kK].nbDims != 4
        || d[kV].nbDims != 4 || d[kSPAN].nbDims != 1)
    {
        return false;
    }
    bool ok = dimIs(d[kQ].d[0], 1) && dimIs(d[kQ].d[1], mParams.num_heads) && dimIs(d[kQ].d[3], mParams.head_dim)
        && dimIs(d[kK].d[1], mParams.num_kv_heads) && dimIs(d[kK].d[3], mParams.head_dim) && dimIs(d[kSPAN].d[0], 2);
    ok = ok && dimIs(d[kK].d[0], d[kQ].d[0]);
    for (int32_t i = 0; i < 4; ++i)
    {
        ok = ok && dimIs(d[kV].d[i], d[kK].d[i]);
    }
    bool const known = d[kQ].d[2] >= 0 && d[kK].d[2] >= 0;
    return ok && (!known || d[kK].d[2] >= d[kQ].d[2]); // T = P + S >= S
}

int32_t HollowAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS)
    {
        return -1;
    }
    Dims const dims[kNB_INPUTS] = {in[kQ].desc.dims, in[kK].desc.dims, in[kV].desc.dims, in[kSPAN].desc.dims};
    if (!checkDims(dims, nbInputs, nbOutputs))
    {
        logError("HollowAttention: input shapes do not match q [B,Hq,S,D], k/v [B,Hkv,T,D], visual_span [2]");
        return -1;
    }
    if (in[kQ].max.nbDims == 4 && in[kQ].max.d[0] > 1)
    {
        logError("HollowAttention: batch must be 1 (the plugin has no attention_mask input, so padded batches "
                 "cannot be honoured); build the engine with a batch-1 profile");
        return -1;
    }
    return 0;
}

size_t HollowAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t HollowAttentionPlugin::setTactic(int32_t /*tactic*/) noexcept
{
    return 0;
}

int32_t HollowAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS)
    {
        return -1;
    }
    Dims const dims[kNB_INPUTS] = {in[kQ].dims, in[kK].dims, in[kV].dims, in[kSPAN].dims};
    if (!checkDims(dims, nbInputs, nbOutputs) || !fitsInt32(in[kQ].dims) || !fitsInt32(in[kK].dims))
    {
        logError("HollowAttention: runtime shapes do not match the plugin attributes");
        return -1;
    }
    return 0;
}

int32_t HollowAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& q = inputDesc[kQ].dims;
    Dims const& k = inputDesc[kK].dims;
    auto const batch = static_cast<int32_t>(q.d[0]);
    auto const qLen = static_cast<int32_t>(q.d[2]);
    auto const kvLen = static_cast<int32_t>(k.d[2]);
    auto const* span = static_cast<int64_t const*>(inputs[kSPAN]);
    auto const rs = reinterpret_cast<rlens_stream_t>(stream);
    HollowAttentionParams const& p = mParams;
    int status = 0;
    if (inputDesc[kQ].type == DataType::kHALF)
    {
        status = rlens_hollow_attention_f16(inputs[kQ], inputs[kK], inputs[kV], span, outputs[0], batch, p.num_heads,
            p.num_kv_heads, qLen, kvLen, p.head_dim, p.window, p.scale, rs);
    }
    else
    {
        status = rlens_hollow_attention_f32(static_cast<float const*>(inputs[kQ]),
            static_cast<float const*>(inputs[kK]), static_cast<float const*>(inputs[kV]), span,
            static_cast<float*>(outputs[0]), batch, p.num_heads, p.num_kv_heads, qLen, kvLen, p.head_dim, p.window,
            p.scale, rs);
    }
    if (status != 0)
    {
        logError("HollowAttention: kernel launch failed");
        return -1;
    }
    return 0;
}

IPluginV3* HollowAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* HollowAttentionPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

// ---------------------------------------------------------------------------------------------
// HollowAttentionPluginCreator

HollowAttentionPluginCreator::HollowAttentionPluginCreator()
{
    mFields = makeFields(nullptr);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* HollowAttentionPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* HollowAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* HollowAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* HollowAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* HollowAttentionPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    HollowAttentionParams params;
    if (!parseFields(fc, params))
    {
        return nullptr;
    }
    if (!validParams(params))
    {
        logError("HollowAttention: invalid attributes (need window >= 1, num_heads % num_kv_heads == 0, "
                 "1 <= head_dim <= 256, scale > 0)");
        return nullptr;
    }
    try
    {
        return new HollowAttentionPlugin(params);
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace trt
} // namespace rlens
